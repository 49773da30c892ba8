"""One spike, one unit: drop the weaker of two neighbouring units' detections of one spike.

    positions = unit_positions(recording, labels, span)                  # [N, 2] µm, NaN: unknown
    drop = duplicate_mask(samples, unit_indices, scores, positions, radius_um=20, window_samples=13)
    radius, threshold, curve = choose_radius_and_threshold(sorting, scores, labels, span, ...)

The paper's post-processing picks peaks unit by unit, so a spike that drives the outputs of two
neighbouring units is reported twice: once as the right unit, once as a false positive of its
neighbour. A sorter that explains each spike by one template (Tridesclous2, Kilosort) cannot do
that. Measured at 384 channels (docs/claims.md, section 0): most of E-Sort's false positives on
the units its labeller sorts well are such duplicates, but this rule, its radius chosen on the
training span's validation tail, moved the scored span's per-unit mean accuracy by +0.001
(static) and -0.002 (drifting): the higher score picks the wrong unit of a pair too often, and
neighbours' real collisions are lost. So it is a diagnosis (realdata.diagnose.without_duplicates,
benchmarks/never_worse.py --duplicates), not a pipeline stage.

Rule (non-iterative, like the minimum distance of esort_jax.postprocess). Detection i is dropped
iff another detection j, of a different unit, lies within ±`window_samples` of it, the two units'
positions are at most `radius_um` apart, and j scores higher (ties: the earlier sample, then the
lower unit index). A dropped detection still drops others. So a detection that reaches a
threshold is only ever dropped by a higher one, which reaches it too: dropping duplicates once
among the detections at the lowest threshold, then thresholding, equals thresholding then
dropping -- one set of detections scores a whole (radius, threshold) grid.

Units without a position (NaN) are never anyone's neighbour. A true collision of two neighbouring
units within the window loses its weaker spike: the radius trades those against duplicates, which
is why `choose_radius_and_threshold` picks it (0 = off) on labelled training data, never on the
span that results are reported for.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from esort_jax.evaluate import evaluate
from esort_jax.recording import Recording, Sorting
from esort_jax.report.snr import unit_snr
from esort_jax.threshold import lowest_within

__all__ = ["DEFAULT_RADII_UM", "unit_positions", "duplicate_mask", "choose_radius_and_threshold"]

# 0 (off), about one row of Neuropixels sites (20 µm), two rows: chosen before any measurement as
# the scales at which two units share their largest channel or its neighbours.
DEFAULT_RADII_UM = (0.0, 20.0, 40.0)


def unit_positions(recording: Recording, labels: Sorting, span: tuple[int, int], *, max_spikes: int = 100,
                   seed: int = 0) -> np.ndarray:
    """[N, 2] position (µm) of each unit of `labels` (in its unit order): the site where the mean
    waveform of its labelled spikes in `span` is largest over the noise (report.snr.unit_snr,
    `max_spikes` spikes drawn with `seed`); NaN for a unit without a spike there."""
    start, stop = int(span[0]), int(span[1])
    if not 0 <= start < stop <= recording.num_samples:
        raise ValueError(f"span must lie in [0, {recording.num_samples}] with start < stop; got {span}")
    _, channels = unit_snr(recording, labels.in_span(start, stop), max_spikes=max_spikes, seed=seed,
                           with_channels=True)
    sites = np.asarray(recording.channel_positions, dtype=np.float64)
    return np.where(channels[:, None] >= 0, sites[np.maximum(channels, 0)], np.nan)


def duplicate_mask(samples: np.ndarray, unit_indices: np.ndarray, scores: np.ndarray, positions: np.ndarray,
                   *, radius_um: float, window_samples: int) -> np.ndarray:
    """[S] True where a detection is a neighbour's duplicate (module doc); all False when
    `radius_um` <= 0. `unit_indices` index the rows of `positions` [N, 2]."""
    samples = np.asarray(samples, dtype=np.int64)
    unit_indices = np.asarray(unit_indices, dtype=np.int64)
    scores = np.asarray(scores)
    positions = np.asarray(positions, dtype=np.float64)
    if not samples.shape == unit_indices.shape == scores.shape or samples.ndim != 1:
        raise ValueError(f"samples, unit_indices and scores must be 1-D of one length; got {samples.shape}, "
                         f"{unit_indices.shape}, {scores.shape}")
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise ValueError(f"positions must be [N, 2]; got {positions.shape}")
    if unit_indices.size and (unit_indices.min() < 0 or unit_indices.max() >= len(positions)):
        raise ValueError(f"unit_indices must index the {len(positions)} rows of positions")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    if int(window_samples) < 0:
        raise ValueError(f"window_samples must be >= 0; got {window_samples}")
    drop = np.zeros(samples.size, dtype=bool)
    if radius_um <= 0 or samples.size < 2:
        return drop
    order = np.lexsort((unit_indices, samples))  # time order; ties by unit index
    s, u, v = samples[order], unit_indices[order], scores[order]
    for shift in range(1, samples.size):
        a, b = np.arange(samples.size - shift), np.arange(shift, samples.size)  # a earlier (or same sample, lower unit)
        close = s[b] - s[a] <= int(window_samples)
        if not close.any():
            break  # samples are sorted: pairs further apart in the order are further apart in time
        a, b = a[close], b[close]
        distance = np.linalg.norm(positions[u[a]] - positions[u[b]], axis=1)  # NaN: never neighbours
        pair = (u[a] != u[b]) & (distance <= float(radius_um))
        a, b = a[pair], b[pair]
        drop[order[a[v[b] > v[a]]]] = True   # the later one scores higher
        drop[order[b[v[b] <= v[a]]]] = True  # the earlier one scores higher or the same
    return drop


def choose_radius_and_threshold(
    sorting: Sorting,
    scores: np.ndarray,
    labels: Sorting,
    span: tuple[int, int],
    thresholds: Sequence[float],
    positions: np.ndarray,
    *,
    radii_um: Sequence[float] = DEFAULT_RADII_UM,
    window_samples: int,
    metric: str = "accuracy_pooled",
    tolerance_ms: float = 0.4,
    within: float = 0.0,
) -> tuple[float, float, dict]:
    """(radius, threshold, curve): the pair of `radii_um` × `thresholds` whose detections agree
    best (`metric`, known identities) with `labels` on `span`, from `sorting`'s detections at the
    lowest threshold and their `scores`. `span` must be labelled training data (the validation
    part of the training region). The choice is the first pair, smaller radius first, then lower
    threshold, within `within` of the best (the threshold sweep's rule, threshold.lowest_within).
    `labels` must hold the units of `sorting` (same ids; others are ignored). The curve holds,
    per radius, the metric at every threshold and how many detections it dropped."""
    values = sorted(float(t) for t in thresholds)
    radii = sorted(float(r) for r in radii_um)
    if not values or not radii:
        raise ValueError("thresholds and radii_um must not be empty")
    scores = np.asarray(scores)
    if scores.shape != (sorting.num_spikes,):
        raise ValueError(f"scores must hold one value per spike ({sorting.num_spikes}); got {scores.shape}")
    if len(positions) != sorting.num_units:
        raise ValueError(f"positions must have one row per unit of the sorting ({sorting.num_units}); "
                         f"got {len(positions)}")
    start, stop = int(span[0]), int(span[1])
    known = labels.select_units(labels.unit_index_of(sorting.unit_ids)).in_span(start, stop)
    inside = (np.asarray(sorting.samples) >= start) & (np.asarray(sorting.samples) < stop)
    detections, detection_scores = sorting.select_spikes(inside), scores[inside]
    curve: dict = {"radius_um": radii, "threshold": values, metric: [], "dropped": [],
                   "span": [start, stop], "metric": metric, "window_samples": int(window_samples),
                   "labels": known.num_spikes}
    for radius in radii:
        drop = duplicate_mask(detections.samples, detections.unit_indices, detection_scores, positions,
                              radius_um=radius, window_samples=window_samples)
        row = []
        for value in values:
            kept = detections.select_spikes(~drop & (detection_scores >= np.float32(value)))
            result = evaluate(kept, known, tolerance_ms=tolerance_ms, identities="known", span=(start, stop))
            row.append(float(result.to_dict()[metric]))
        curve[metric].append(row)
        curve["dropped"].append(int((drop & (detection_scores >= np.float32(values[0]))).sum()))
    radius_index, threshold_index = divmod(lowest_within(np.ravel(curve[metric]), within), len(values))
    best = radii[radius_index], values[threshold_index]
    curve["chosen"] = {"radius_um": best[0], "threshold": best[1],
                       metric: curve[metric][radius_index][threshold_index], "within": float(within)}
    return best[0], best[1], curve
