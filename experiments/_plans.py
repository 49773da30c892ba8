"""The entry points' own settings (which arms, which K, what to sort...) as typed, validated
frozen dataclasses; the library's stages have theirs (PipelineConfig and friends).

    plan = read_plan(LabelEfficiencyPlan, cfg)     # ks, seeds, arms, metric, reference_accuracy

A plan's fields are top-level keys of its conf/<entry point>.yaml (YAML keys = field names).
`read_plan` converts them with esort_jax.config.from_dict before any work, so an error names
the key (`ks: every entry must be an integer >= 1; got [0, 2]`).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig

from esort_jax.config import from_dict, require
from esort_jax.realdata.preprocess import check_as_trained_mode
from esort_jax.realdata.quality import QualityFilter
from esort_jax.report.comparison import REACH_METRICS
from esort_jax.report.curves import SUMMARY_METRICS
from esort_jax.transfer import INITS
from experiments._common import to_container

__all__ = ["read_plan", "check_ks", "TransferPlan", "LabelEfficiencyPlan", "ESortArms", "BaselinesPlan",
           "LabelsSpec", "TruthSpec", "SortRealPlan", "SortPlan"]

T = TypeVar("T")


def read_plan(cls: type[T], cfg: DictConfig, where: str = "") -> T:
    """Dataclass `cls` from the top-level keys of `cfg` named as its fields (absent: defaults).
    A single value where a list is expected is a one-entry list (`ks=5`); a mandatory value
    left unset (`???`) reads as null, so the plan's own check names it."""
    hints = typing.get_type_hints(cls)
    mapping = {}
    for field in dataclasses.fields(cls):
        if field.name in cfg:
            value = _unset_as_none(to_container(cfg.get(field.name)))
            if typing.get_origin(hints[field.name]) is tuple and not isinstance(value, (list, type(None))):
                value = [value]
            mapping[field.name] = value
    return from_dict(cls, mapping, where)


def _unset_as_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _unset_as_none(v) for k, v in value.items()}
    return None if value == MISSING else value


def check_ks(pipeline, ks, where: str = "finetune.") -> None:
    """The fine-tuning pipeline (a PipelineConfig) is valid at every K of `ks` (errors name
    `where`): the windows, and what depends on K elsewhere (k_only's threshold needs K >= 2)."""
    for k in ks:
        pipeline.replace(windows=dataclasses.replace(pipeline.windows, spikes_per_unit=k)).validate(where)


def _check_arms(arms: tuple[str, ...], key: str) -> None:
    require(len(arms) > 0 and all(a in INITS for a in arms) and len(set(arms)) == len(arms), key,
            f"must be a non-empty subset of {list(INITS)}; got {list(arms)}")


def _check_ints(values: tuple[int, ...], key: str, minimum: int) -> None:
    require(len(values) > 0, key, f"must be a non-empty list of integers; got {list(values)!r}")
    require(all(v >= minimum for v in values), key,
            f"every entry must be an integer >= {minimum}; got {list(values)!r}")
    require(len(set(values)) == len(values), key, f"entries must be distinct; got {list(values)!r}")


def _checkpoint_problem(path: str) -> str | None:
    """Why `path` is not a checkpoint folder (esort_jax.checkpoint.checkpoint_problem), or None."""
    from esort_jax.checkpoint import checkpoint_problem

    return checkpoint_problem(Path(path).expanduser())


@dataclasses.dataclass(frozen=True)
class TransferPlan:
    """experiments/transfer.py: the arms to fine-tune (K is finetune.windows.spikes_per_unit)."""

    arms: tuple[str, ...] = INITS

    def validate(self, where: str = "") -> None:
        _check_arms(self.arms, "arms")


@dataclasses.dataclass(frozen=True)
class LabelEfficiencyPlan:
    """experiments/label_efficiency.py: K per unit (run in increasing order), seeds, arms, the
    metric of the gain and label-reduction figures, and an accuracy to reach (or None)."""

    ks: tuple[int, ...] = (1, 2, 5, 10, 15, 20)
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = INITS
    metric: str = "accuracy_pooled"
    reference_accuracy: float | None = None

    def validate(self, where: str = "") -> None:
        _check_ints(self.ks, "ks", 1)
        _check_ints(self.seeds, "seeds", 0)
        _check_arms(self.arms, "arms")
        require(self.metric in SUMMARY_METRICS, "metric",
                f"must be one of {list(SUMMARY_METRICS)}; got {self.metric!r}")
        if self.reference_accuracy is not None:
            require(0.0 < self.reference_accuracy <= 1.0, "reference_accuracy",
                    f"must lie in (0, 1] or be null; got {self.reference_accuracy:g}")


@dataclasses.dataclass(frozen=True)
class ESortArms:
    """experiments/baselines.py, `esort`: which E-Sort arms run beside the sorters: `arms` at
    every K of `ks` (empty: none)."""

    ks: tuple[int, ...] = (1, 2, 5, 10, 15)
    arms: tuple[str, ...] = INITS

    def validate(self, where: str = "esort") -> None:
        for i, k in enumerate(self.ks):
            require(k >= 1, f"{where}.ks[{i}]", f"must be >= 1 (labelled spikes per unit); got {k}")
        require(len(set(self.ks)) == len(self.ks), f"{where}.ks", f"entries must be distinct; got {list(self.ks)}")
        _check_arms(self.arms, f"{where}.arms")


@dataclasses.dataclass(frozen=True)
class BaselinesPlan:
    """experiments/baselines.py beside the sorters (esort_jax.realdata.baselines.BaselinesConfig):
    the E-Sort arms and the metric of "K to reach a sorter's accuracy"."""

    esort: ESortArms = ESortArms()
    metric: str = "accuracy_pooled"

    def validate(self, where: str = "") -> None:
        require(self.metric in REACH_METRICS, "metric", f"must be one of {list(REACH_METRICS)}; got {self.metric!r}")


@dataclasses.dataclass(frozen=True)
class LabelsSpec:
    """sort_real's `labels`: the labelling sorter's output (a Phy/Kilosort folder or a
    SpikeInterface sorting folder), its run time when its log lacks it, the units to train on."""

    path: str | None = None
    sorter_seconds: float | None = None
    filter: QualityFilter = QualityFilter()
    clear_dropped_units: bool = True

    def validate(self, where: str = "labels") -> None:
        require(bool(self.path), f"{where}.path",
                "required (a Phy/Kilosort folder or a SpikeInterface sorting folder)")


def _require_exists(path: str | None, key: str) -> None:
    """A path a run reads must exist when the config is read, not when its stage comes."""
    if path:
        require(Path(str(path)).expanduser().exists(), key, f"{path} does not exist")


@dataclasses.dataclass(frozen=True)
class TruthSpec:
    """sort_real's `truth`: optional ground truth scored on the rest -- anything carrying it
    (esort_jax.io.load_ground_truth: a recording folder or MEArec file with ground truth, a
    SpikeInterface sorting folder, a Phy folder, a .npz sorting); None: the recording's own, if
    it has one. The path must exist when the config is read; sort_real.py reads the spikes and
    checks they fit the recording before any training."""

    path: str | None = None

    def validate(self, where: str = "truth") -> None:
        _require_exists(self.path, f"{where}.path")


@dataclasses.dataclass(frozen=True)
class SortRealPlan:
    """experiments/sort_real.py: how the network starts (init, a pretrained `checkpoint`, or one
    pretrained on a source synthesised on the recording's geometry), the training span, the
    labels and the optional ground truth."""

    init: str = "transfer"
    checkpoint: str | None = None
    train_seconds: float = 30.0
    labels: LabelsSpec = LabelsSpec()
    truth: TruthSpec = TruthSpec()

    def validate(self, where: str = "") -> None:
        require(self.init in INITS, "init", f"must be {' or '.join(map(repr, INITS))}; got {self.init!r}")
        require(not (self.init == "scratch" and self.checkpoint), "checkpoint",
                "given with init=scratch; drop it or use init=transfer")
        problem = _checkpoint_problem(self.checkpoint) if self.checkpoint else None
        require(problem is None, "checkpoint", str(problem))
        require(self.train_seconds > 0, "train_seconds", f"must be a number > 0; got {self.train_seconds:g}")


@dataclasses.dataclass(frozen=True)
class SortPlan:
    """experiments/sort.py: the fine-tuned `checkpoint`, its threshold (None: the one chosen on
    its training region), the part to sort ([start_s, stop_s]; None: all) and whether to
    preprocess the recording as the network's training data was ('checkpoint') or not ('none')."""

    checkpoint: str | None = None
    threshold: float | None = None
    span: tuple[float, float] | None = None
    preprocess: str = "checkpoint"

    def validate(self, where: str = "") -> None:
        require(bool(self.checkpoint), "checkpoint",
                "required (a fine-tuned checkpoint folder, e.g. finetune.py's <run>/checkpoint)")
        problem = _checkpoint_problem(self.checkpoint)
        require(problem is None, "checkpoint", str(problem))
        check_as_trained_mode(self.preprocess, "preprocess")
        if self.span is not None:
            require(0 <= self.span[0] < self.span[1], "span",
                    f"must be [start_s, stop_s] with 0 <= start_s < stop_s; got [{self.span[0]:g}, {self.span[1]:g}]")

    @property
    def folder(self) -> Path:
        """The checkpoint folder (~ expanded)."""
        return Path(str(self.checkpoint)).expanduser()

    def samples(self, recording) -> tuple[int, int]:
        """[start, stop) in samples of `recording`: `span` (ConfigError unless inside it) or all."""
        if self.span is None:
            return 0, recording.num_samples
        start, stop = (int(round(v * recording.sampling_frequency)) for v in self.span)
        require(0 <= start < stop <= recording.num_samples, "span",
                f"[{self.span[0]:g}, {self.span[1]:g}] s is outside the recording's {recording.duration_s:g} s")
        return start, stop
