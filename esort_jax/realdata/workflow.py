"""E-Sort the way SpikeInterface users call a sorter, trained from another sorter's output.

    import spikeinterface.extractors as se
    from esort_jax.realdata.workflow import run_esort

    recording = se.read_spikeglx("/data/run_g0")                  # any SpikeInterface recording
    sorting = run_esort(recording, "/data/ks4/sorter_output",      # labels: Phy/Kilosort folder,
                        train_seconds=300, folder="esort_out")     # SI sorting, or our Sorting

The workflow: a conventional sorter labels the first `train_seconds` of the recording; E-Sort
keeps the units that pass a quality filter there, trains on those labels (from scratch, or
from a pretrained backbone: `checkpoint=`), chooses its threshold on the validation tail of
the training span against the same labels (`esort_jax.pipeline.validation_threshold`), then
sorts the whole recording with `esort_jax.sort.sort_recording`. The recording is sorted in two
calls split at `train_end` (each with enough context that the spikes near the split are the
one-pass ones), so the time E-Sort needs for the rest is measured on its own.

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

from esort_jax.config import ConfigError, to_dict
from esort_jax.evaluate import EvaluationResult, evaluate
from esort_jax.infer import InferenceConfig, fold_batchnorm
from esort_jax.io.atomic import atomic_folder, write_json
from esort_jax.realdata.labeller import load_labels
from esort_jax.io.phy import PhyExportConfig, write_phy_folder, write_sorting_folder
from esort_jax.realdata.labeller import SorterLabels, check_labels_fit
from esort_jax.model import ModelConfig
from esort_jax.pipeline import EvaluationConfig, Fitted, fit, validation_threshold
from esort_jax.postprocess import PostprocessConfig
from esort_jax.realdata.preprocess import PreprocessConfig, preprocessed_recording
from esort_jax.realdata.quality import QualityFilter, UnitSelection, select_units
from esort_jax.recording import Recording, Sorting
from esort_jax.sort import SORTING_DEFAULTS, SortResult, sort_recording
from esort_jax.train import TrainConfig
from esort_jax.transfer import TransferConfig
from esort_jax.windows import WindowConfig

__all__ = [
    "CPU_TRAIN",
    "LabelledSort",
    "as_recording",
    "esort_from_labels",
    "run_esort",
    "sort_split",
    "write_outputs",
]

# Sane CPU defaults: the paper's network, every labelled spike of the training span, 10 epochs.
CPU_TRAIN = TrainConfig(epochs=10, progress=False)


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
      before, rest: the two sorting calls, [0, train_end) and [train_end, end).
      recording: the (preprocessed) recording E-Sort ran on.
      seconds: wall time per stage (fit, threshold, sort_before, sort_rest).
    """

    sorting: Sorting
    scores: np.ndarray
    labels: SorterLabels
    selection: UnitSelection
    fitted: Fitted
    threshold: float
    threshold_curve: dict
    train_end: int
    before: SortResult
    rest: SortResult
    recording: Recording
    seconds: dict

    @property
    def rest_span(self) -> tuple[int, int]:
        """The samples after the training span where E-Sort can report spikes: up to the anchor
        of the last window that fits in the recording."""
        model = self.fitted.model.config
        return (self.train_end, self.recording.num_samples - model.window + 1 + model.anchor)

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


def as_recording(recording: Any, preprocess: PreprocessConfig | None = None) -> Recording:
    """Our lazy Recording from a SpikeInterface recording or ours, preprocessed when asked."""
    if isinstance(recording, Recording):
        if preprocess is None or not preprocess.enabled:
            return recording
        from esort_jax.io.spikeinterface import to_spikeinterface_recording

        return preprocessed_recording(to_spikeinterface_recording(recording), preprocess)
    from spikeinterface.core import BaseRecording

    if not isinstance(recording, BaseRecording):
        raise TypeError(
            f"recording: expected a SpikeInterface recording or a Recording; got {type(recording).__name__}"
        )
    return preprocessed_recording(recording, preprocess or PreprocessConfig(enabled=False))


def sort_split(
    params, recording: Recording, unit_ids: np.ndarray, *, threshold: float, split: int,
    infer_config: InferenceConfig | None = None, postprocess_config: PostprocessConfig | None = None,
) -> tuple[Sorting, np.ndarray, SortResult, SortResult]:
    """Sort [0, split) and [split, end) in two calls that together give the one-pass spikes.

    Each call reads `margin` samples past the split (smoothing half-width, neighbour,
    min-distance reach) so the peaks near it see the same context as in one pass; spikes are
    then taken from the call whose side of the split their anchor is on.
    """
    postprocess_config = postprocess_config or PostprocessConfig()
    window, anchor = params.window, params.anchor
    margin = postprocess_config.half_width + max(postprocess_config.min_distance_samples - 1, 0) + 2
    n = recording.num_samples
    common = dict(threshold=threshold, infer_config=infer_config, postprocess_config=postprocess_config)
    before = sort_recording(params, recording, unit_ids, start=0, stop=min(split + window - 1 + margin, n), **common)
    rest = sort_recording(params, recording, unit_ids, start=max(split - margin, 0), stop=n, **common)
    cut = split + anchor
    keep_before, keep_rest = before.sorting.samples < cut, rest.sorting.samples >= cut
    samples = np.concatenate([before.sorting.samples[keep_before], rest.sorting.samples[keep_rest]])
    units = np.concatenate([before.sorting.unit_indices[keep_before], rest.sorting.unit_indices[keep_rest]])
    scores = np.concatenate([before.scores[keep_before], rest.scores[keep_rest]])
    order = np.lexsort((units, samples))
    merged = Sorting(samples[order], units[order], np.asarray(unit_ids), recording.sampling_frequency)
    return merged, scores[order], before, rest


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
      evaluation: the threshold sweep (default EvaluationConfig()).
      sorter_seconds: the labelling sorter's run time, when not recorded with its output.
      train_dir: folder for training checkpoints (None: no checkpoints).
    """
    model = model or ModelConfig()
    windows = windows or WindowConfig()
    train = train or CPU_TRAIN
    quality = quality or QualityFilter()
    evaluation = evaluation or EvaluationConfig()
    postprocess = postprocess or PostprocessConfig()
    init = init or ("transfer" if checkpoint is not None else "scratch")
    transfer = TransferConfig(init=init, checkpoint=None if checkpoint is None else str(checkpoint), freeze=freeze)
    for config, where in ((model, "model"), (windows, "windows"), (train, "train"), (quality, "labels.filter"),
                          (evaluation, "evaluation"), (postprocess, "postprocess"), (transfer, "transfer")):
        config.validate(where)

    recording = as_recording(recording, preprocess)
    train_end = int(round(float(train_seconds) * recording.sampling_frequency))
    if not 0 < train_end < recording.num_samples:
        raise ConfigError(
            f"train_seconds: must lie in (0, {recording.duration_s:g}) (the recording's duration); got {train_seconds}"
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

    seconds = {}
    started = time.perf_counter()
    fitted = fit(
        recording, selection.sorting, model, windows, train, transfer,
        seed=seed, run_dir=train_dir, train_span=(0, train_end),
        metadata_extra={
            "role": "esort_from_labels", "labels": labels.source.get("path"),
            # how the traces were preprocessed: experiments/sort.py applies the same to new recordings
            "preprocess": recording.metadata.get("preprocess_config"),
        },
    )
    seconds["fit"] = time.perf_counter() - started
    fitted.model.eval()
    params = fold_batchnorm(fitted.model)
    started = time.perf_counter()
    threshold, curve = validation_threshold(
        fitted, params, recording, selection.sorting, evaluation,
        infer_config=infer, postprocess_config=postprocess,
    )
    seconds["threshold"] = time.perf_counter() - started
    sorting, scores, before, rest = sort_split(
        params, recording, fitted.unit_ids, threshold=threshold, split=train_end,
        infer_config=infer, postprocess_config=postprocess,
    )
    seconds["sort_before"], seconds["sort_rest"] = before.seconds, rest.seconds
    return LabelledSort(
        sorting=sorting, scores=scores, labels=labels, selection=selection, fitted=fitted,
        threshold=threshold, threshold_curve=curve, train_end=train_end, before=before, rest=rest,
        recording=recording, seconds=seconds,
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
    folder: str | Path | None = None,
    phy: PhyExportConfig | None = None,
    overwrite: bool = False,
) -> Any:
    """E-Sort trained on `labels` over the first `train_seconds`, run on the whole recording;
    returns a SpikeInterface sorting (unit ids as the labelling sorter's; property
    'labeller_label'). With `folder`, also writes sorting/, phy/ and checkpoint/ there
    (see write_outputs) and training checkpoints under folder/train/. Arguments as in
    `esort_from_labels`."""
    if folder is not None and Path(folder).exists() and not overwrite and any(Path(folder).iterdir()):
        raise FileExistsError(
            f"{folder} already exists and is not empty (pass overwrite=True to replace its outputs)"
        )
    result = esort_from_labels(
        recording, labels, train_seconds=train_seconds, checkpoint=checkpoint, init=init, freeze=freeze,
        model=model, windows=windows, train=train, quality=quality, evaluation=evaluation, infer=infer,
        postprocess=postprocess, preprocess=preprocess, sorter_seconds=sorter_seconds, seed=seed,
        train_dir=None if folder is None else Path(folder) / "train",
    )
    if folder is not None:
        write_outputs(result, folder, phy=phy, overwrite=True, seed=seed)
        write_json(Path(folder) / "esort.json", {
            "threshold": result.threshold,
            "train_end": result.train_end,
            "units": result.selection.report(),
            "timing": result.timing(),
            "labels": result.labels.source,
            "configs": {"model": to_dict(model or ModelConfig()), "train": to_dict(train or CPU_TRAIN)},
        })
    return result.to_spikeinterface()
