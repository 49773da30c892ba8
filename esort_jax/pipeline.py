"""The E-Sort pipeline: the method's stages in order, each one named call.

    config  = PipelineConfig(windows=WindowConfig(spikes_per_unit=10), train=TrainConfig(epochs=40),
                             transfer=TransferConfig(init="transfer", checkpoint="runs/pre/checkpoint"))
    fitted  = fit(recording, labels, config, seed=0, run_dir="runs/ft")    # stages 1-3
    outcome = sort_and_evaluate(fitted, recording, truth, config)           # stages 4-6

  1. windows    training and validation windows from the labels       windows.make_windows
  2. network    fresh, or the backbone of a pretrained checkpoint     transfer.finetune_model
  3. train      BCE + Adam on the training windows                    train.train
  4. threshold  swept on the validation part of the training region   threshold.choose_threshold
                (label_mode 'k_only': 2-fold CV over the K labels)     choose_by_folds
  5. sort       streamed inference into peak picking                  sort.sort_recording
  6. evaluate   matching against the truth on the scored span         evaluate.evaluate

Every caller goes through these functions: the experiments' arms (transfer, label efficiency,
baselines), pretraining (`fit` with `init='scratch'` on a source), the real-data workflow
(`esort_jax.realdata.workflow`: `fit`, `choose`, `sort` of the whole recording) and sorting
with a saved network (`sort`). The threshold is only ever chosen on labelled training data;
the evaluation span is only ever sorted and scored.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np

from esort_jax.accounting import accounting, label_noise, training_labels
from esort_jax.config import ConfigError
from esort_jax.evaluate import EvaluationConfig, EvaluationResult, evaluate, scored_span
from esort_jax.infer import InferenceConfig, InferenceParams, fold_batchnorm, predict_probabilities
from esort_jax.model import ModelConfig, ESortNet
from esort_jax.postprocess import PostprocessConfig
from esort_jax.recording import Recording, Sorting
from esort_jax.sort import SortResult, sort_recording
from esort_jax.threshold import choose_threshold, fold_split, heldout_recall_threshold, sweep_thresholds
from esort_jax.train import TrainConfig, TrainResult, evaluate_windows, train
from esort_jax.transfer import TransferConfig, TransferReport, finetune_model
from esort_jax.windows import (
    LabelError, WindowConfig, WindowSets, balanced_windows, check_distinct_ids, make_windows,
)

__all__ = [
    "PipelineConfig", "Fitted", "Outcome",
    "fit", "check_unit_ids", "choose", "choose_by_folds", "label_accounting", "sort", "score", "window_scores",
    "sort_and_evaluate",
]

@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Every stage's settings (each validated by its own `validate`)."""

    model: ModelConfig = ModelConfig()
    windows: WindowConfig = WindowConfig()
    train: TrainConfig = TrainConfig()
    transfer: TransferConfig = TransferConfig(init="scratch")
    evaluation: EvaluationConfig = EvaluationConfig()
    infer: InferenceConfig = InferenceConfig()
    postprocess: PostprocessConfig = PostprocessConfig()

    def validate(self, where: str = "") -> None:
        for field in dataclasses.fields(self):
            getattr(self, field.name).validate(f"{where}{field.name}")
        if self.windows.label_mode == "k_only" and self.train.early_stopping_patience_steps:
            raise ConfigError(
                f"{where}train.early_stopping_patience_steps: early stopping watches the validation part's "
                "complete labels, which label_mode 'k_only' does not have; turn one of them off"
            )
        k = self.windows.spikes_per_unit
        if self.windows.label_mode == "k_only" and self.evaluation.threshold is None and k is not None and k < 2:
            raise ConfigError(
                f"{where}windows.spikes_per_unit: label_mode 'k_only' chooses its threshold by 2-fold cross-validation "
                f"over the K labelled spikes, which needs K >= 2; got K = {k}: use K >= 2 or set evaluation.threshold"
            )

    def replace(self, **changes) -> "PipelineConfig":
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(eq=False)
class Fitted:
    """A trained network, the windows it was trained on and how it was trained."""

    model: ESortNet
    windows: WindowSets
    train_result: TrainResult
    transfer_report: TransferReport
    label_facts: dict = dataclasses.field(default_factory=dict)  # esort_jax.accounting.training_labels

    @property
    def unit_ids(self) -> np.ndarray:
        return self.windows.unit_ids

    @cached_property
    def params(self) -> InferenceParams:
        """The network in eval mode with BatchNorm folded into the weights (for inference)."""
        self.model.eval()
        return fold_batchnorm(self.model)

    def summary(self) -> dict:
        """Training summary for results.json: epochs, window counts, the batch used (and why it
        differs from the configured one, if it does), last epoch's metrics."""
        history = self.train_result.history
        last = history[-1] if history else {}
        summary = {
            "epochs": self.train_result.epochs_completed,
            "train_windows": len(self.windows.train),
            "validation_windows": len(self.windows.validation),
            "num_units": self.windows.num_units,
            "batch_size": self.train_result.batch_size,
            "steps": self.train_result.steps,
            "stopped_early": self.train_result.stopped_early,
            "final": {k: v for k, v in last.items() if isinstance(v, (int, float))},
        }
        if self.train_result.batch_note:
            summary["batch_note"] = self.train_result.batch_note
        return summary


@dataclasses.dataclass(eq=False)
class Outcome:
    """The sorted evaluation span, its scores, and the threshold that sorted it."""

    sort_result: SortResult
    evaluation: EvaluationResult
    threshold: float
    threshold_curve: dict
    window_metrics: dict

    def metrics(self) -> dict:
        """Flat summary for results.json / W&B: spike-level scores (one key per metric, as
        EvaluationResult.to_dict), threshold, timing, and window-level scores (`window_*`)."""
        result = self.sort_result
        out = {
            **self.evaluation.to_dict(),
            "threshold": self.threshold,
            "sort_seconds": result.seconds,
            "inference_seconds": result.inference_seconds,
            "postprocess_seconds": result.postprocess_seconds,
            "sorted_duration_s": (result.span[1] - result.span[0]) / result.sorting.sampling_frequency,
            "num_spikes_found": result.sorting.num_spikes,
        }
        out.update({f"window_{k}": v for k, v in self.window_metrics.items()})
        return out


def fit(
    recording: Recording,
    labels: Sorting,
    config: PipelineConfig,
    *,
    seed: int,
    run_dir: str | Path | None = None,
    train_span: tuple[int, int] | None = None,
    eval_span: tuple[int, int] | None = None,
    callback: Callable[[int, dict], None] | None = None,
    metadata_extra: dict | None = None,
    truth: Sorting | None = None,
) -> Fitted:
    """Stages 1-3: windows from `labels` → network (fresh, or transferred from a checkpoint) →
    trained (checkpoints in `run_dir`, resumed from there). Pretraining is this with
    `config.transfer.init == 'scratch'` on a source recording. With `truth` (what the network
    will be scored against), the network's unit ids are checked against it before any
    training (`check_unit_ids`) and the training labels measured against it
    (`accounting.label_noise`, into `Fitted.label_facts`)."""
    windows = make_windows(
        recording, labels, config.windows, window=config.model.window, anchor=config.model.anchor,
        seed=seed, train_span=train_span, eval_span=eval_span,
    )
    facts = training_labels(windows, labels)
    if truth is not None:
        check_unit_ids(windows.unit_ids, truth)
        facts.update(label_noise(windows, truth))
    model, report = finetune_model(
        recording.num_channels, windows.num_units, config.model, config.transfer,
        seed=seed, channel_positions=recording.channel_positions,
    )
    result = train(
        model, recording, windows, dataclasses.replace(config.train, seed=seed),
        run_dir=run_dir, freeze=config.transfer.freeze, callback=callback,
        transfer=report.to_dict(), metadata_extra=metadata_extra,
    )
    return Fitted(model=result.model, windows=windows, train_result=result, transfer_report=report, label_facts=facts)


def check_unit_ids(unit_ids, truth: Sorting) -> None:
    """LabelError naming the ids of `unit_ids` (the network's units, from the labels) that are
    not units of `truth`: scores pair a network unit with the truth unit of the same id, so
    such a unit could never be matched (its spikes would all count as false positives). Also
    LabelError if the truth's own ids repeat (one network unit would be scored twice)."""
    check_distinct_ids(truth.unit_ids, "the ground truth's")
    truth_ids = truth.unit_ids.tolist()  # Python values: 3 and np.int64(3) match
    known = set(truth_ids)
    absent = [u for u in np.asarray(unit_ids).tolist() if u not in known]
    if not absent:
        return
    shown = lambda ids: ", ".join(map(repr, ids[:10])) + (", ..." if len(ids) > 10 else "")  # noqa: E731
    as_text = {str(u) for u in truth_ids}
    hint = (" (they match the truth's ids only as text: compare types, e.g. '3' is not 3)"
            if all(str(u) in as_text for u in absent) else "")
    raise LabelError(
        f"{len(absent)} label unit id(s) are not units of the ground truth: {shown(absent)}{hint}; the "
        f"truth's {len(truth_ids)} units are [{shown(truth_ids)}]. Units are scored against the truth "
        "unit of the same id: relabel the labels with the truth's ids, or score against the truth "
        "they were made from"
    )


def choose(fitted: Fitted, recording: Recording, labels: Sorting, config: PipelineConfig, *,
           seed: int = 0) -> tuple[float, dict]:
    """Stage 4: (threshold, sweep curve) on the validation part of the training region,
    against `labels` (the labels the network was trained from); with label_mode 'k_only' from
    the K labelled spikes alone (`choose_by_folds`)."""
    if config.evaluation.threshold is None and fitted.windows.config.label_mode == "k_only":
        return choose_by_folds(fitted, recording, config, seed=seed)
    return choose_threshold(
        fitted.params, recording, labels, fitted.windows.validation_span, config.evaluation,
        unit_ids=fitted.unit_ids, infer_config=config.infer, postprocess_config=config.postprocess,
    )


def choose_by_folds(fitted: Fitted, recording: Recording, config: PipelineConfig, *, seed: int) -> tuple[float, dict]:
    """label_mode 'k_only': (threshold, curve) from the K labelled spikes alone. The kept
    spikes are split in two folds (`threshold.fold_split`); for each, a network is fitted with
    the same settings on the other fold (K/2 per unit, same training region), the training span
    is sorted, and the held-out labelled spikes' recall is measured at every swept threshold;
    `threshold.heldout_recall_threshold` picks the threshold (evaluation.heldout_recall_fraction).
    Costs two more fine-tunings."""
    windows = fitted.windows
    kept = windows.kept_spikes.select_units(windows.kept_spikes.unit_index_of(fitted.unit_ids))
    half = -(-windows.config.spikes_per_unit // 2)
    fold_config = config.replace(windows=dataclasses.replace(windows.config, spikes_per_unit=half,
                                                             short_units="keep_all", units=None))
    region, span = tuple(windows.report["training_region"]), windows.train_span
    curves = []
    for trained_on, held_out in fold_split(kept):
        if not held_out.num_spikes or not trained_on.num_spikes:
            continue
        fold = fit(recording, trained_on, fold_config, seed=seed, train_span=region, eval_span=windows.eval_span)
        p_NxT = predict_probabilities(fold.params, recording, config.infer, start=span[0], stop=span[1])
        _, curve = sweep_thresholds(p_NxT, span[0] + fold.params.anchor, held_out, config.evaluation.thresholds,
                                    tolerance_ms=config.evaluation.tolerance_ms, config=config.postprocess,
                                    unit_ids=fitted.unit_ids, metric="recall_pooled")
        curve["heldout_spikes"], curve["train_steps"] = held_out.num_spikes, fold.train_result.steps
        curves.append(curve)
    if not curves:
        raise LabelError("label_mode 'k_only' needs at least 2 labelled spikes of some unit to choose a threshold "
                         "(or set evaluation.threshold)")
    threshold, curve = heldout_recall_threshold(curves, config.evaluation.heldout_recall_fraction)
    curve["fold_train_steps"] = [c["train_steps"] for c in curves]  # the folds' extra training
    return threshold, curve


def label_accounting(fitted: Fitted, threshold_curve: dict, config: PipelineConfig) -> dict:
    """The labels a fitted and thresholded network used (esort_jax.accounting: the four
    ACCOUNTING_KEYS and `label_accounting`, the breakdown), for every results.json arm."""
    return accounting(fitted.label_facts, threshold_curve, train_steps=fitted.train_result.steps,
                      early_stopping=config.train.early_stopping_patience_steps > 0)


def sort(
    fitted: Fitted,
    recording: Recording,
    config: PipelineConfig,
    *,
    threshold: float,
    span: tuple[int, int] | None = None,
    split: int | None = None,
) -> SortResult:
    """Stage 5: the spikes of `span` (default: the evaluation span), optionally in two calls
    meeting at `split` (see sort.sort_recording)."""
    start, stop = fitted.windows.eval_span if span is None else span
    return sort_recording(
        fitted.params, recording, fitted.unit_ids, threshold=threshold, infer_config=config.infer,
        postprocess_config=config.postprocess, start=start, stop=stop, split=split,
    )


def score(
    result: SortResult,
    truth: Sorting,
    config: PipelineConfig,
    *,
    identities: str = "known",
    span: tuple[int, int] | None = None,
) -> EvaluationResult:
    """Stage 6: `result` against `truth` on `span` (default: the scored span of what was sorted,
    `evaluate.scored_span`). Units of `truth` the network lacks count all their spikes as missed.
    With identities 'known', LabelError if a sorted unit is not a unit of `truth`
    (`check_unit_ids`): it could never be matched."""
    if identities == "known":
        check_unit_ids(result.sorting.unit_ids, truth)
    if span is None:
        span = scored_span(result.span, window=config.model.window, anchor=config.model.anchor)
    return evaluate(result.sorting, truth, tolerance_ms=config.evaluation.tolerance_ms,
                    identities=identities, span=span)


def window_scores(fitted: Fitted, recording: Recording, truth: Sorting, config: PipelineConfig, *, seed: int) -> dict:
    """Window-level precision / recall / accuracy / Jaccard of the network on balanced windows
    of the evaluation span (at most `evaluation.window_metrics_max`; {} when 0)."""
    if not config.evaluation.window_metrics_max:
        return {}
    held_out = balanced_windows(
        truth, fitted.windows.eval_span, window=config.model.window, anchor=config.model.anchor,
        jitter=fitted.windows.train.jitter, seed=seed, stream="held_out",
        unit_indices=truth.unit_index_of(fitted.unit_ids), max_windows=config.evaluation.window_metrics_max,
    )
    if not len(held_out):
        return {}
    metrics = evaluate_windows(fitted.model, recording, held_out)
    precision, recall = metrics.get("precision", 0.0), metrics.get("recall", 0.0)
    metrics["jaccard"] = 1.0 / (1.0 / precision + 1.0 / recall - 1.0) if precision > 0 and recall > 0 else 0.0
    return metrics


def sort_and_evaluate(
    fitted: Fitted, recording: Recording, truth: Sorting, config: PipelineConfig, *, seed: int = 0,
    labels: Sorting | None = None,
) -> Outcome:
    """Stages 4-6: choose the threshold on the validation span against `labels` (those the
    network was trained from; default `truth`), sort the evaluation span, score it against
    `truth` (spike level and window level). LabelError first if a network unit is not a unit
    of `truth` (`check_unit_ids`)."""
    check_unit_ids(fitted.unit_ids, truth)
    threshold, curve = choose(fitted, recording, truth if labels is None else labels, config, seed=seed)
    result = sort(fitted, recording, config, threshold=threshold)
    return Outcome(
        sort_result=result, evaluation=score(result, truth, config), threshold=threshold,
        threshold_curve=curve, window_metrics=window_scores(fitted, recording, truth, config, seed=seed),
    )
