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

from typing import Any, Iterable, Sequence

import numpy as np

from esort_jax.evaluate import EvaluationConfig, evaluate
from esort_jax.infer import InferenceConfig, InferenceParams, predict_probabilities
from esort_jax.postprocess import PostprocessConfig, find_spikes
from esort_jax.recording import Recording, Sorting

__all__ = ["SWEEP_METRICS", "choose_threshold", "sweep_thresholds"]

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
        metric=config.threshold_metric,
    )
    curve["span"] = [int(span[0]), int(span[1])]
    curve["metric"] = config.threshold_metric
    return best, curve


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
) -> tuple[float, dict[str, list]]:
    """The threshold maximising `metric` on a TRAINING span, and the whole curve.

    Callers must pass traces and ground truth of a training span (the labelled stretch used
    for fitting), never of the evaluation span: the chosen threshold is a fitted parameter.

    Spikes are detected once at the lowest threshold; each threshold keeps the spikes whose
    score reaches it, which equals a separate run per threshold (see the module docstring).
    Each is evaluated with known identities (row n of p is unit `unit_ids[n]`, default
    `truth.unit_ids`) on the span the traces cover. Ties go to the lowest threshold.

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
    score = np.asarray(curve[metric], dtype=np.float64)
    best = int(np.argmax(np.where(np.isnan(score), -np.inf, score)))
    return values[best], curve
