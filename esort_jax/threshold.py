"""Stage 4 of the pipeline: the post-processing threshold, chosen on labelled TRAINING data.

    threshold, curve = choose_threshold(params, recording, labels, span, EvaluationConfig(),
                                        unit_ids=unit_ids)

The threshold is a fitted parameter: it is chosen on the validation part of the training region
(labelled, never fitted on) and never on the span that results are reported for. The sweep
detects spikes once at the lowest threshold; raising the threshold removes exactly the spikes
whose smoothed score is below it (see esort_jax.postprocess), so each threshold is scored from
one set of detections, with known identities, on the anchors the traces cover.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

import numpy as np

from esort_jax.evaluate import EvaluationConfig, evaluate
from esort_jax.infer import InferenceConfig, InferenceParams, predict_probabilities
from esort_jax.postprocess import PostprocessConfig, find_spikes
from esort_jax.recording import Recording, Sorting

__all__ = ["SWEEP_METRICS", "choose_threshold", "sweep_thresholds", "lowest_within", "grid_edge", "fold_split",
           "heldout_recall_threshold"]

log = logging.getLogger(__name__)

# What a sweep can maximise (EvaluationResult.to_dict() keys).
SWEEP_METRICS = ("accuracy_pooled", "precision_pooled", "recall_pooled", "accuracy_mean",
                 "accuracy_median", "precision_mean", "recall_mean", "well_detected")


def choose_threshold(
    params: InferenceParams,
    recording: Recording,
    labels: Sorting,
    span: tuple[int, int],
    config: EvaluationConfig,
    *,
    unit_ids: Sequence | np.ndarray,
    infer_config: InferenceConfig | None = None,
    postprocess_config: PostprocessConfig | None = None,
) -> tuple[float, dict]:
    """(threshold, curve): `config.threshold` when fixed (curve {}), else the best of
    `config.thresholds` by `config.threshold_metric` on `span` of `recording`.

    `span` must be labelled training data (the validation part of the training region);
    `labels` are scored only for the network's units `unit_ids` (row n of the network is unit
    `unit_ids[n]`; spikes of other units are ignored).
    """
    if config.threshold is not None:
        return float(config.threshold), {}
    if span[1] - span[0] < params.window:
        raise ValueError(
            f"the validation span {tuple(span)} is too short to choose a threshold; set "
            "windows.validation_fraction > 0 or a fixed evaluation.threshold"
        )
    unit_ids = np.asarray(unit_ids)
    known = labels.select_units(labels.unit_index_of(unit_ids))
    p_NxT = predict_probabilities(params, recording, infer_config, start=span[0], stop=span[1])
    best, curve = sweep_thresholds(
        p_NxT, span[0] + params.anchor, known.in_span(*span), config.thresholds,
        tolerance_ms=config.tolerance_ms, config=postprocess_config, unit_ids=unit_ids,
        metric=config.threshold_metric, within=config.threshold_tolerance,
    )
    curve["span"] = [int(span[0]), int(span[1])]
    curve["metric"] = config.threshold_metric
    curve["tolerance"] = float(config.threshold_tolerance)
    curve["rule"] = "validation_sweep"
    scored = known.in_span(span[0] + params.anchor, span[1] - params.window + 1 + params.anchor)
    curve["labels"] = scored.num_spikes  # the labelled spikes the choice saw (esort_jax.accounting)
    curve["grid_edge"] = grid_edge(best, config.thresholds)
    if curve["grid_edge"] == "highest":
        log.warning(
            "the threshold sweep chose the largest threshold of its grid (%g): a larger one might agree "
            "more with the labels. Labels that miss spikes (another sorter's) push the sweep up, so a "
            "lower threshold can be the better one against the truth (docs/claims.md, section 0); see "
            "threshold_curve, and set evaluation.thresholds or a fixed evaluation.threshold", best)
    return best, curve


def grid_edge(chosen: float, grid: Iterable[float]) -> str | None:
    """'highest' or 'lowest' when `chosen` is that end of a grid of two or more thresholds, else
    None: a choice at the grid's edge may be limited by the grid."""
    values = sorted(float(t) for t in grid)
    if len(values) < 2:
        return None
    if float(chosen) == values[-1]:
        return "highest"
    if float(chosen) == values[0]:
        return "lowest"
    return None


def sweep_thresholds(
    p_NxT: Any,
    sample_offset: int,
    truth: Sorting,
    thresholds: Iterable[float],
    tolerance_ms: float = 0.4,
    *,
    config: PostprocessConfig | None = None,
    unit_ids: Sequence | np.ndarray | None = None,
    metric: str = "accuracy_pooled",
    tolerance_samples: int | None = None,
    within: float = 0.0,
) -> tuple[float, dict[str, list]]:
    """The threshold maximising `metric` on a TRAINING span, and the whole curve.

    Callers must pass traces and ground truth of a training span (the labelled stretch used
    for fitting), never of the evaluation span: the chosen threshold is a fitted parameter.

    Spikes are detected once at the lowest threshold; each threshold keeps the spikes whose
    score reaches it, which equals a separate run per threshold (see the module docstring).
    Each is evaluated with known identities (row n of p is unit `unit_ids[n]`, default
    `truth.unit_ids`) on the span the traces cover. The choice is the lowest threshold whose
    `metric` is within `within` of the best (0: the best; ties go to the lowest threshold).

    Returns:
      (best threshold, curve) with curve keys 'threshold', 'num_spikes' and the
      EvaluationResult.to_dict() metrics (accuracy_pooled, precision_pooled, recall_pooled,
      accuracy_mean, accuracy_median, precision_mean, recall_mean, well_detected).
    """
    values = sorted(float(t) for t in thresholds)
    if not values:
        raise ValueError("thresholds must not be empty")
    config = PostprocessConfig() if config is None else config
    unit_ids = truth.unit_ids if unit_ids is None else np.asarray(unit_ids)
    stats: dict = {}
    sorting, scores = find_spikes(
        p_NxT, sampling_frequency=truth.sampling_frequency, unit_ids=unit_ids,
        sample_offset=sample_offset, config=config, threshold=values[0],
        return_scores=True, stats=stats,
    )
    span = (int(sample_offset), int(sample_offset) + stats["num_steps"])
    keys = list(SWEEP_METRICS)
    if metric not in keys:
        raise ValueError(f"metric must be one of {keys}; got {metric!r}")
    curve: dict[str, list] = {"threshold": [], "num_spikes": [], **{k: [] for k in keys}}
    for value in values:
        kept = sorting.select_spikes(scores >= np.float32(value))
        summary = evaluate(
            kept, truth, tolerance_ms=tolerance_ms, tolerance_samples=tolerance_samples,
            identities="known", span=span,
        ).to_dict()
        curve["threshold"].append(value)
        curve["num_spikes"].append(kept.num_spikes)
        for k in keys:
            curve[k].append(summary[k])
    return values[lowest_within(curve[metric], within)], curve


def lowest_within(scores: Sequence[float], within: float = 0.0) -> int:
    """Index of the first of `scores` (ordered from the lowest threshold up) within `within` of
    the best; NaN counts as no score. `within` 0: the first best."""
    score = np.asarray(scores, dtype=np.float64)
    score = np.where(np.isnan(score), -np.inf, score)
    return int(np.argmax(score >= np.max(score) - float(within)))


# ----------------------------------------------------------------------------------------------
# label_mode='k_only': the threshold from the K labelled spikes alone (pipeline.choose_by_folds)


def fold_split(spikes: Sorting, folds: int = 2) -> list[tuple[Sorting, Sorting]]:
    """(trained on, held out) per fold: each unit's spikes in time order, its r-th spike held
    out in fold r % folds (K = 2: one spike each way)."""
    rank = np.zeros(spikes.num_spikes, dtype=np.int64)
    for u in range(spikes.num_units):
        where = np.flatnonzero(spikes.unit_indices == u)
        rank[where] = np.arange(where.size)
    return [(spikes.select_spikes(rank % folds != f), spikes.select_spikes(rank % folds == f))
            for f in range(folds)]


def heldout_recall_threshold(curves: Sequence[dict], fraction: float) -> tuple[float, dict]:
    """The k_only rule: (threshold, curve). Per fold, `curves` hold `threshold`, the held-out
    labelled spikes' `recall_pooled` at each threshold and their count `heldout_spikes`; the
    recall is pooled over folds, and the threshold is the LARGEST one whose pooled held-out
    recall is at least `fraction` of the pooled recall at the lowest threshold (the lowest
    threshold when no held-out spike is found at all). Precision cannot be measured without
    complete labels: raising the threshold until recall starts to drop is what the K spikes can
    tell."""
    thresholds = [float(t) for t in curves[0]["threshold"]]
    counts = np.asarray([c["heldout_spikes"] for c in curves], dtype=np.float64)
    found = sum(np.asarray(c["recall_pooled"], dtype=np.float64) * n for c, n in zip(curves, counts))
    recall = found / max(counts.sum(), 1.0)
    target = fraction * recall[0]
    best = thresholds[int(np.flatnonzero(recall >= target).max())] if recall[0] > 0 else thresholds[0]
    curve = {"rule": "k_only_cv", "threshold": thresholds, "heldout_recall": recall.tolist(),
             "fraction": float(fraction), "folds": len(curves), "labels": int(counts.sum()),
             "num_spikes": [sum(c["num_spikes"][i] for c in curves) for i in range(len(thresholds))]}
    return best, curve
