"""The stages composed: fit a network on labelled windows, then sort and evaluate a span.

These are the building blocks of the experiments (and of notebooks): plain dataclass configs
in, plain results out, no Hydra.

    fitted = fit(recording, labels, model_cfg, window_cfg, train_cfg, TransferConfig(init="scratch"),
                 seed=0, run_dir="runs/target")
    outcome = sort_and_evaluate(fitted, recording, truth, EvaluationConfig())

The threshold is chosen on the validation part of the TRAINING region (labelled, never fitted
on, never the evaluation span); the evaluation span is only ever sorted and scored.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from esort_jax.config import require, to_dict
from esort_jax.evaluate import EvaluationResult, evaluate
from esort_jax.infer import InferenceConfig, InferenceParams, fold_batchnorm
from esort_jax.model import ESortNet, ModelConfig
from esort_jax.postprocess import PostprocessConfig
from esort_jax.recording import Recording, Sorting
from esort_jax.sort import SortResult, select_threshold, sort_recording
from esort_jax.train import TrainConfig, TrainResult, evaluate_windows, train
from esort_jax.transfer import TransferConfig, TransferReport, finetune_model
from esort_jax.windows import WindowConfig, WindowSets, balanced_windows, make_windows

__all__ = [
    "EvaluationConfig", "Fitted", "Outcome", "fit", "scored_span", "sort_and_evaluate", "spike_metrics",
    "validation_threshold",
    "window_jaccard",
]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """How a fitted network is judged.

    Attributes:
      tolerance_ms: spike matching tolerance (SpikeInterface default 0.4 ms; the paper used
        30 samples ≈ 0.94 ms at 32 kHz).
      threshold: a fixed post-processing threshold; None sweeps `thresholds` on the validation
        part of the training region and keeps the best by `threshold_metric`.
      thresholds: the sweep (paper: 0.5 … 2.9 with the peak-normalised 17-tap kernel).
      threshold_metric: what the sweep maximises.
      window_metrics_max: windows of the evaluation span scored at window level (0: skip).
    """

    tolerance_ms: float = 0.4
    threshold: float | None = None
    thresholds: tuple[float, ...] = tuple(round(0.5 + 0.2 * i, 2) for i in range(13))
    threshold_metric: str = "accuracy_pooled"
    window_metrics_max: int = 16384

    def validate(self, where: str = "evaluation") -> None:
        require(self.tolerance_ms > 0, f"{where}.tolerance_ms", f"must be > 0; got {self.tolerance_ms}")
        require(len(self.thresholds) > 0, f"{where}.thresholds", "must list at least one value")
        require(
            all(t > 0 for t in self.thresholds), f"{where}.thresholds", f"must be > 0; got {list(self.thresholds)}"
        )
        require(self.window_metrics_max >= 0, f"{where}.window_metrics_max", "must be >= 0")


@dataclasses.dataclass(eq=False)
class Fitted:
    """A trained network and how it was trained."""

    model: ESortNet
    windows: WindowSets
    train_result: TrainResult
    transfer_report: TransferReport

    @property
    def unit_ids(self) -> np.ndarray:
        return self.windows.unit_ids


@dataclasses.dataclass(eq=False)
class Outcome:
    """Sorting of the evaluation span and its scores."""

    sort_result: SortResult
    evaluation: EvaluationResult
    threshold: float
    threshold_curve: dict
    window_metrics: dict

    def metrics(self) -> dict:
        """Flat summary for results.json / W&B (spike-level and window-level)."""
        out = {
            **spike_metrics(self.evaluation),
            "threshold": self.threshold,
            "sort_seconds": self.sort_result.seconds,
            "inference_seconds": self.sort_result.inference_seconds,
            "postprocess_seconds": self.sort_result.postprocess_seconds,
            "sorted_duration_s": (self.sort_result.span[1] - self.sort_result.span[0])
            / self.sort_result.sorting.sampling_frequency,
            "num_spikes_found": self.sort_result.sorting.num_spikes,
        }
        out.update({f"window_{k}": v for k, v in self.window_metrics.items()})
        return out


def spike_metrics(evaluation: EvaluationResult) -> dict:
    """The spike-level scores every method reports (E-Sort's arms, baseline sorters): pooled
    accuracy / precision / recall, per-unit mean and median, well-detected units."""
    summary = evaluation.to_dict()
    return {
        "accuracy_pooled": summary["accuracy_pooled"],
        "accuracy_mean": summary["accuracy_mean"],
        "accuracy_median": summary["accuracy_median"],
        "precision": summary["precision_pooled"],
        "recall": summary["recall_pooled"],
        "precision_mean": summary["precision_mean"],
        "recall_mean": summary["recall_mean"],
        "well_detected": summary["well_detected"],
        "n_units": summary["n_units"],
        "tolerance_ms": summary["tolerance_ms"],
    }


def window_jaccard(metrics: dict) -> float:
    """Window-level TP / (TP + FP + FN) from precision and recall (0 when undefined)."""
    p, r = metrics.get("precision", 0.0), metrics.get("recall", 0.0)
    if p <= 0 or r <= 0:
        return 0.0
    return 1.0 / (1.0 / p + 1.0 / r - 1.0)


def fit(
    recording: Recording,
    labels: Sorting,
    model_config: ModelConfig,
    window_config: WindowConfig,
    train_config: TrainConfig,
    transfer_config: TransferConfig,
    *,
    seed: int,
    run_dir: str | Path | None = None,
    train_span: tuple[int, int] | None = None,
    eval_span: tuple[int, int] | None = None,
    callback: Callable[[int, dict], None] | None = None,
    metadata_extra: dict | None = None,
) -> Fitted:
    """Windows from `labels` → network (fresh, or transferred from a checkpoint) → trained."""
    windows = make_windows(
        recording, labels, window_config,
        window=model_config.window, anchor=model_config.anchor, seed=seed,
        train_span=train_span, eval_span=eval_span,
    )
    model, report = finetune_model(
        recording.num_channels, windows.num_units, model_config, transfer_config,
        seed=seed, channel_positions=recording.channel_positions,
    )
    result = train(
        model, recording, windows, dataclasses.replace(train_config, seed=seed),
        run_dir=run_dir, freeze=transfer_config.freeze, callback=callback,
        transfer=report.to_dict(), metadata_extra=metadata_extra,
    )
    return Fitted(model=result.model, windows=windows, train_result=result, transfer_report=report)


def scored_span(eval_span: tuple[int, int], *, window: int, anchor: int) -> tuple[int, int]:
    """The samples `sort_and_evaluate` scores for an evaluation span [e0, e1): the anchors of the
    windows that lie inside it, [e0 + anchor, e1 - window + 1 + anchor). Baseline sorters are
    scored on the same stretch."""
    e0, e1 = int(eval_span[0]), int(eval_span[1])
    return (e0 + anchor, e1 - window + 1 + anchor)


def sort_and_evaluate(
    fitted: Fitted,
    recording: Recording,
    truth: Sorting,
    config: EvaluationConfig,
    *,
    infer_config: InferenceConfig | None = None,
    postprocess_config: PostprocessConfig | None = None,
    seed: int = 0,
) -> Outcome:
    """Choose the threshold on the validation span, sort the evaluation span, score it.

    `truth` is scored over all its units: units the network does not have (e.g. dropped for
    too few labels) count all their spikes as missed.
    """
    model = fitted.model
    model.eval()
    params = fold_batchnorm(model)
    windows = fitted.windows
    unit_ids = windows.unit_ids
    threshold, curve = validation_threshold(
        fitted, params, recording, truth, config,
        infer_config=infer_config, postprocess_config=postprocess_config,
    )
    e0, e1 = windows.eval_span
    result = sort_recording(
        params, recording, unit_ids, threshold=threshold,
        infer_config=infer_config, postprocess_config=postprocess_config, start=e0, stop=e1,
    )
    covered = scored_span((e0, e1), window=model.config.window, anchor=model.config.anchor)
    evaluation = evaluate(
        result.sorting, truth, tolerance_ms=config.tolerance_ms, identities="known", span=covered
    )
    window_metrics = {}
    if config.window_metrics_max:
        columns = _reindex(unit_ids, truth.unit_ids)  # the network's units as truth's indices
        held_out = balanced_windows(
            truth, (e0, e1), window=model.config.window, anchor=model.config.anchor,
            jitter=windows.train.jitter, seed=seed, stream=7,
            unit_indices=columns, max_windows=config.window_metrics_max,
        )
        if len(held_out):
            window_metrics = evaluate_windows(model, recording, held_out)
            window_metrics["jaccard"] = window_jaccard(window_metrics)
    return Outcome(
        sort_result=result, evaluation=evaluation, threshold=threshold,
        threshold_curve=curve, window_metrics=window_metrics,
    )


def validation_threshold(
    fitted: Fitted,
    params: InferenceParams,
    recording: Recording,
    labels: Sorting,
    config: EvaluationConfig,
    *,
    infer_config: InferenceConfig | None = None,
    postprocess_config: PostprocessConfig | None = None,
) -> tuple[float, dict]:
    """(threshold, curve): `config.threshold` when fixed, else the best of `config.thresholds`
    on the validation part of the training region, scored against `labels` (their spikes of
    the network's units; other units ignored). `params` are `fitted.model`'s folded weights."""
    if config.threshold is not None:
        return float(config.threshold), {}
    unit_ids = fitted.windows.unit_ids
    span = fitted.windows.validation_span
    if span[1] - span[0] < fitted.model.config.window:
        raise ValueError(
            f"the validation span {span} is too short to choose a threshold; set "
            "windows.validation_fraction > 0 or a fixed evaluation.threshold"
        )
    known = labels.select_spikes(np.isin(labels.unit_ids[labels.unit_indices], unit_ids))
    known = Sorting(
        samples=known.samples,
        unit_indices=_reindex(known.unit_ids[known.unit_indices], unit_ids),
        unit_ids=unit_ids,
        sampling_frequency=known.sampling_frequency,
    )
    return select_threshold(
        params, recording, known, span, config.thresholds,
        tolerance_ms=config.tolerance_ms, metric=config.threshold_metric,
        infer_config=infer_config, postprocess_config=postprocess_config,
    )


def _reindex(ids: np.ndarray, unit_ids: np.ndarray) -> np.ndarray:
    """Positions of `ids` in `unit_ids` (every id must be present)."""
    order = np.argsort(unit_ids, kind="stable")
    return order[np.searchsorted(unit_ids[order], ids)].astype(np.int64)


def config_summary(**configs) -> dict:
    """Dataclass configs as one JSON-able dict (for checkpoint metadata / cache keys)."""
    return {name: to_dict(value) for name, value in configs.items()}
