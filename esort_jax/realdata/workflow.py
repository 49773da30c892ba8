"""E-Sort the way SpikeInterface users call a sorter, trained from another sorter's output.

    import spikeinterface.extractors as se
    from esort_jax.realdata.workflow import run_esort

    recording = se.read_spikeglx("<spikeglx run folder>")                  # any SpikeInterface recording
    sorting = run_esort(recording, "<kilosort folder>/sorter_output",      # labels: Phy/Kilosort folder,
                        train_seconds=300, folder="esort_out")     # SI sorting, or our Sorting

The workflow: a conventional sorter (the labeller) labels the first `train_seconds` of the
recording; E-Sort keeps the units that pass a quality filter there, and the pipeline
(esort_jax.pipeline) trains on those labels (from scratch, or from a pretrained backbone:
`checkpoint=`), chooses its threshold on the validation tail of the training span against the
same labels, then sorts the whole recording, in two calls meeting at `train_end` (the same
spikes as one pass), so the time E-Sort needs for the rest is measured on its own.

`esort_from_labels` returns everything (labels, unit selection, network, threshold, timing);
`run_esort` returns the SpikeInterface sorting and, with `folder=`, writes it out.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from esort_jax import pipeline
from esort_jax.config import ConfigError, to_dict
from esort_jax.evaluate import EvaluationConfig, EvaluationResult, evaluate, scored_span
from esort_jax.infer import InferenceConfig
from esort_jax.io.atomic import atomic_folder, write_json
from esort_jax.io.phy import PhyExportConfig, write_phy_folder, write_sorting_folder
from esort_jax.model import ModelConfig
from esort_jax.pipeline import Fitted, PipelineConfig
from esort_jax.postprocess import PostprocessConfig
from esort_jax.realdata.labeller import SorterLabels, check_labels_fit, load_labels
from esort_jax.realdata.preprocess import PreprocessConfig, as_recording
from esort_jax.realdata.quality import QualityFilter, UnitSelection, select_units
from esort_jax.recording import Recording, Sorting
from esort_jax.sort import SORTING_DEFAULTS, SortResult
from esort_jax.train import TrainConfig
from esort_jax.transfer import TransferConfig
from esort_jax.windows import WindowConfig

__all__ = [
    "CPU_TRAIN",
    "LABELLED_EVALUATION",
    "LabelledSort",
    "esort_from_labels",
    "run_esort",
    "write_outputs",
]

# Sane CPU defaults: the paper's network, every labelled spike of the training span, at most 10
# epochs, stopped once the validation loss has not improved for 300 optimiser steps. Early stopping
# scored as well as the full 10 epochs on the 64-channel development recordings and took a third of
# the fine-tuning time at 384 channels (docs/claims.md, section 0, "Early stopping by default").
CPU_TRAIN = TrainConfig(epochs=10, early_stopping_patience_steps=300, progress=False)
# The threshold sweep on another sorter's labels: they miss spikes, so E-Sort's true detections of
# those count against low thresholds; keep the lowest threshold within 0.005 of the best agreement
# (chosen on 64-channel recordings, tested at 384: docs/claims.md, section 0).
LABELLED_EVALUATION = EvaluationConfig(threshold_tolerance=0.005)


@dataclasses.dataclass(eq=False)
class LabelledSort:
    """E-Sort trained on a sorter's labels over [0, train_end), then run on the whole recording.

    Attributes:
      sorting: E-Sort's spikes over the whole recording (the kept units, the sorter's ids).
      scores: [S] each spike's smoothed probability peak.
      labels: the sorter's labels as read (every unit).
      selection: which units were kept for training, and why others were dropped.
      fitted: the trained network, its windows and training history.
      threshold, threshold_curve: the post-processing threshold and the sweep that chose it.
      train_end: first sample after the training span.
      sorted: the sort of the whole recording; `sorted.parts` are its two calls, [0, train_end)
        and [train_end, end).
      recording: the (preprocessed) recording E-Sort ran on.
      seconds: wall time per stage (fit, threshold, sort_before, sort_rest).
      config: the pipeline settings it ran with.
    """

    sorting: Sorting
    scores: np.ndarray
    labels: SorterLabels
    selection: UnitSelection
    fitted: Fitted
    threshold: float
    threshold_curve: dict
    train_end: int
    sorted: SortResult
    recording: Recording
    seconds: dict
    config: PipelineConfig = dataclasses.field(default_factory=PipelineConfig)

    @property
    def rest_span(self) -> tuple[int, int]:
        """The samples after the training span where E-Sort can report spikes: up to the anchor
        of the last window that fits in the recording."""
        model = self.fitted.model.config
        return (self.train_end, scored_span((0, self.recording.num_samples), window=model.window, anchor=model.anchor)[1])

    @property
    def before(self) -> SortResult:
        """The sorting call of [0, train_end)."""
        return self.sorted.parts[0]

    @property
    def rest(self) -> SortResult:
        """The sorting call of [train_end, end)."""
        return self.sorted.parts[1]

    def agreement(self, tolerance_ms: float = 0.4) -> EvaluationResult:
        """E-Sort against the labelling sorter (kept units, known identities) on `rest_span`."""
        return evaluate(self.sorting, self.selection.sorting, tolerance_ms=tolerance_ms,
                        identities="known", span=self.rest_span)

    def timing(self) -> dict:
        """Sorting time of the rest against its real duration, and the labelling sorter's speed
        when its run time is known (its seconds per second of data over E-Sort's)."""
        fs = self.recording.sampling_frequency
        rest_s = (self.recording.num_samples - self.train_end) / fs
        sort_rest = self.rest.seconds
        out = {
            "recording_duration_s": self.recording.duration_s,
            "train_duration_s": self.train_end / fs,
            "rest_duration_s": rest_s,
            "sort_rest_seconds": sort_rest,
            "sort_rest_inference_seconds": self.rest.inference_seconds,
            "sort_rest_postprocess_seconds": self.rest.postprocess_seconds,
            "sort_rest_realtime_factor": rest_s / sort_rest if sort_rest > 0 else None,
            "sort_all_seconds": self.before.seconds + sort_rest,
            "fit_seconds": self.seconds.get("fit"),
            "threshold_seconds": self.seconds.get("threshold"),
            "sorter_seconds": self.labels.sorter_seconds,
            "sorter_duration_s": self.recording.duration_s,
            "speed_ratio": None,
            "speed_ratio_with_training": None,
        }
        if self.labels.sorter_seconds and sort_rest > 0:
            per_second_sorter = self.labels.sorter_seconds / self.recording.duration_s
            out["speed_ratio"] = per_second_sorter / (sort_rest / rest_s)
            total = sort_rest + (self.seconds.get("fit") or 0.0) + (self.seconds.get("threshold") or 0.0)
            out["speed_ratio_with_training"] = per_second_sorter / (total / rest_s)
        return out

    def truth_scores(self, truth: Sorting, tolerance_ms: float = 0.4) -> dict:
        """E-Sort, the labelling sorter's kept units and all its units against ground truth on
        `rest_span`, identities unknown (units paired by agreement); each with per-unit rows and
        SpikeForest's SNR-binned summary (esort_jax.report.snr, SNR on the traces E-Sort ran on)."""
        from esort_jax.report.snr import snr_summary, unit_snr

        sortings = {"esort": self.sorting, "labeller_kept_units": self.selection.sorting,
                    "labeller_all_units": self.labels.sorting}
        snr = unit_snr(self.recording, truth)
        out = {}
        for name, sorting in sortings.items():
            scores = _scores(evaluate(sorting, truth, tolerance_ms=tolerance_ms, identities="unknown",
                                      span=self.rest_span))
            out[name] = {**scores, **snr_summary(scores["per_unit"], snr, truth.unit_ids)}
        out["unit_snr"] = {"unit_ids": truth.unit_ids.tolist(), "snr": [None if v != v else v for v in snr.tolist()]}
        return out

    def summary(self, tolerance_ms: float = 0.4) -> dict:
        """What a run reports (experiments/sort_real.py's results.json): the training span and
        the rest, how the network started, the units kept, training, the threshold and its
        sweep, the spikes found, the agreement with the labels on the rest, the timing."""
        fitted = self.fitted
        return {
            "train_end": self.train_end,
            "rest_span": list(self.rest_span),
            "init": fitted.transfer_report.init,
            "checkpoint": fitted.transfer_report.source,
            "transfer_report": fitted.transfer_report.to_dict(),
            "units": self.selection.report(),
            # (the units kept are in `units`)
            "training": {k: v for k, v in fitted.summary().items() if k != "num_units"},
            "threshold": self.threshold,
            "threshold_curve": self.threshold_curve,
            **pipeline.label_accounting(fitted, self.threshold_curve, self.config),
            "num_spikes": self.sorting.num_spikes,
            "agreement": _scores(self.agreement(tolerance_ms)),
            "timing": self.timing(),
        }

    def to_spikeinterface(self) -> Any:
        """E-Sort's sorting as a SpikeInterface NumpySorting, with the labelling sorter's label
        of each unit as the property 'labeller_label'."""
        from esort_jax.io.spikeinterface import to_spikeinterface_sorting

        si_sorting = to_spikeinterface_sorting(self.sorting)
        si_sorting.set_property("labeller_label", np.asarray(self._labeller_labels()))
        si_sorting.annotate(esort_threshold=self.threshold, esort_train_end=self.train_end)
        return si_sorting

    def _labeller_labels(self) -> list[str]:
        by_id = {row["unit_id"]: row["label"] for row in self.selection.rows}
        return [str(by_id[u]) for u in self.sorting.unit_ids.tolist()]


def _scores(result: EvaluationResult) -> dict:
    """Pooled and per-unit summary plus the per-unit rows, for results.json."""
    return {**result.to_dict(), "per_unit": result.per_unit()}


def esort_from_labels(
    recording: Any,
    labels: Any,
    *,
    train_seconds: float,
    checkpoint: str | Path | None = None,
    init: str | None = None,
    freeze: str = "none",
    model: ModelConfig | None = None,
    windows: WindowConfig | None = None,
    train: TrainConfig | None = None,
    quality: QualityFilter | None = None,
    evaluation: EvaluationConfig | None = None,
    infer: InferenceConfig | None = None,
    postprocess: PostprocessConfig | None = None,
    preprocess: PreprocessConfig | None = None,
    sorter_seconds: float | None = None,
    seed: int = 0,
    train_dir: str | Path | None = None,
    clear_dropped_units: bool = True,
) -> LabelledSort:
    """Train on the labels of the first `train_seconds`, sort the whole recording (module doc).

    Args:
      recording: a SpikeInterface recording or our Recording (preprocessed with `preprocess`
        when given; none by default: pass it preprocessed, or a PreprocessConfig).
      labels: a Phy/Kilosort folder, a SpikeInterface sorting (object or folder), a Sorting,
        or SorterLabels (see esort_jax.realdata.labeller.load_labels).
      train_seconds: the training span [0, train_seconds) whose labels E-Sort learns from.
      checkpoint: a pretrained checkpoint whose backbone starts the network (transfer);
        None trains from scratch. `init` ('transfer' | 'scratch') defaults accordingly.
      freeze: 'none' | 'temporal' | 'backbone' (transfer only).
      model, windows, train: network, training windows (default: every labelled spike of the
        span) and optimisation (default CPU_TRAIN); the windows' validation_fraction is the
        tail of the training span the threshold is chosen on.
      quality: which units to train on (default QualityFilter()).
      evaluation: the threshold sweep (default LABELLED_EVALUATION: the lowest threshold within
        0.005 of the best agreement with the labels).
      sorter_seconds: the labelling sorter's run time, when not recorded with its output.
      train_dir: folder for training checkpoints (None: no checkpoints).
      clear_dropped_units: the training negatives avoid the spikes of every labelled unit, the
        ones the quality filter dropped too (True, default: those spikes are real spikes, and a
        negative window on one teaches the network that a spike there is noise). False trains
        on the kept units' spikes alone, as before issue 17 (measured in docs/claims.md).
    """
    init = init or ("transfer" if checkpoint is not None else "scratch")
    config = PipelineConfig(
        model=model or ModelConfig(), windows=windows or WindowConfig(), train=train or CPU_TRAIN,
        transfer=TransferConfig(init=init, checkpoint=None if checkpoint is None else str(checkpoint), freeze=freeze),
        evaluation=evaluation or LABELLED_EVALUATION, infer=infer or InferenceConfig(),
        postprocess=postprocess or PostprocessConfig(),
    )
    config.validate()
    quality = quality or QualityFilter()
    quality.validate("labels.filter")

    recording = as_recording(recording, preprocess)
    train_end = int(round(float(train_seconds) * recording.sampling_frequency))
    window = config.model.window
    if not window <= train_end <= recording.num_samples - window:
        raise ConfigError(
            f"train_seconds: must lie in (0, {recording.duration_s:g}) (the recording's duration) and leave "
            f"a window ({window} samples) on each side; got {train_seconds}"
        )
    labels = load_labels(labels, duration_s=recording.duration_s, sorter_seconds=sorter_seconds)
    check_labels_fit(labels, recording)
    selection = select_units(labels, (0, train_end), quality)
    if not selection.kept.any():
        raise ConfigError(
            f"labels.filter: no unit of {len(selection.rows)} passes the quality filter in the training span "
            f"[0, {train_seconds:g} s): {selection.report()['dropped_by_reason']} (label, spikes, rate, isi: "
            "the tests that failed); loosen labels.filter or lengthen train_seconds"
        )
    return _fit_and_sort(recording, labels, selection, config, train_end=train_end, seed=seed, train_dir=train_dir,
                         clear_dropped_units=clear_dropped_units)


def _training_labels(labels: SorterLabels, selection: UnitSelection, config: PipelineConfig,
                     clear_dropped_units: bool) -> tuple[Sorting, PipelineConfig]:
    """(labels, config) to fit on: every unit's spikes with the label columns restricted to the
    kept units (the negatives avoid the dropped units' spikes too), or the kept units alone."""
    if not clear_dropped_units:
        return selection.sorting, config
    kept = selection.kept_ids
    if config.windows.units is not None:
        wanted = {str(u) for u in config.windows.units}
        kept = [u for u in kept if str(u) in wanted]
    return labels.sorting, config.replace(windows=dataclasses.replace(config.windows, units=tuple(kept)))


def _fit_and_sort(recording, labels, selection, config, *, train_end, seed, train_dir,
                  clear_dropped_units=True) -> LabelledSort:
    """The pipeline on the kept units: fit on [0, train_end), threshold on its validation tail
    against the same labels, sort the whole recording split at train_end."""
    seconds = {}
    started = time.perf_counter()
    fit_labels, config = _training_labels(labels, selection, config, clear_dropped_units)
    fitted = pipeline.fit(
        recording, fit_labels, config, seed=seed, run_dir=train_dir, train_span=(0, train_end),
        metadata_extra={
            "role": "esort_from_labels", "labels": labels.source.get("path"),
            # how the traces were preprocessed: experiments/sort.py applies the same to new recordings
            "preprocess": recording.metadata.get("preprocess_config"),
        },
    )
    seconds["fit"] = time.perf_counter() - started
    started = time.perf_counter()
    threshold, curve = pipeline.choose(fitted, recording, selection.sorting, config, seed=seed)
    seconds["threshold"] = time.perf_counter() - started
    result = pipeline.sort(fitted, recording, config, threshold=threshold, span=(0, recording.num_samples),
                           split=train_end)
    seconds["sort_before"], seconds["sort_rest"] = result.parts[0].seconds, result.parts[1].seconds
    return LabelledSort(
        sorting=result.sorting, scores=result.scores, labels=labels, selection=selection, fitted=fitted,
        threshold=threshold, threshold_curve=curve, train_end=train_end, sorted=result,
        recording=recording, seconds=seconds, config=config,
    )


def write_outputs(
    result: LabelledSort,
    folder: str | Path,
    *,
    phy: PhyExportConfig | None = None,
    overwrite: bool = False,
    seed: int = 0,
) -> dict:
    """Write `folder/sorting/` (SpikeInterface sorting folder), `folder/phy/` (Phy folder,
    unless phy.enabled is false) and `folder/checkpoint/` (the trained network with the chosen
    threshold in sorting_defaults.json, for experiments/sort.py) when training checkpointed.
    Each atomically. Returns {name: path}."""
    folder = Path(folder)
    phy = phy or PhyExportConfig()
    written = {"sorting": str(write_sorting_folder(
        result.sorting, folder / "sorting", overwrite=overwrite,
        properties={"labeller_label": result._labeller_labels()},
    ))}
    if phy.enabled:
        written["phy"] = str(write_phy_folder(result.sorting, result.recording, folder / "phy", phy,
                                              overwrite=overwrite, seed=seed))
    trained = result.fitted.train_result.checkpoint
    if trained is not None:
        with atomic_folder(folder / "checkpoint", overwrite=True) as tmp:
            shutil.copytree(trained, tmp, dirs_exist_ok=True)
            write_json(tmp / SORTING_DEFAULTS, {
                "threshold": result.threshold,
                "threshold_curve": result.threshold_curve,
                "train_end": result.train_end,
            })
        written["checkpoint"] = str(folder / "checkpoint")
    return written


def run_esort(
    recording: Any,
    labels: Any,
    *,
    train_seconds: float,
    folder: str | Path | None = None,
    phy: PhyExportConfig | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Any:
    """E-Sort trained on `labels` over the first `train_seconds`, run on the whole recording;
    returns a SpikeInterface sorting (unit ids as the labelling sorter's; property
    'labeller_label'). With `folder`, also writes sorting/, phy/ and checkpoint/ there
    (see write_outputs) and training checkpoints under folder/train/. `options` are those of
    `esort_from_labels` (checkpoint, init, freeze, model, windows, train, quality, evaluation,
    infer, postprocess, preprocess, sorter_seconds, seed)."""
    if folder is not None and Path(folder).exists() and not overwrite and any(Path(folder).iterdir()):
        raise FileExistsError(
            f"{folder} already exists and is not empty (pass overwrite=True to replace its outputs)"
        )
    if "train_dir" in options:
        raise TypeError("run_esort: training checkpoints go to <folder>/train; pass folder=, not train_dir=")
    result = esort_from_labels(recording, labels, train_seconds=train_seconds,
                               train_dir=None if folder is None else Path(folder) / "train", **options)
    if folder is not None:
        seed = options.get("seed", 0)
        write_outputs(result, folder, phy=phy, overwrite=True, seed=seed)
        write_json(Path(folder) / "esort.json", {
            "threshold": result.threshold,
            "train_end": result.train_end,
            "units": result.selection.report(),
            "timing": result.timing(),
            "labels": result.labels.source,
            "configs": {"model": to_dict(result.fitted.model.config),
                        "train": to_dict(options.get("train") or CPU_TRAIN)},
        })
    return result.to_spikeinterface()
