"""Why E-Sort scores below its labeller on a unit: diagnostics against ground truth (issue 17).

    flags = label_flags(labels.sorting, selection.kept, truth, (0, train_end))
    best = oracle_threshold(result, truth, thresholds)   # a diagnosis, never a reported result

    misses = spike_misses(result.sorting, truth, span, locations, units=well_sorted)

`label_flags` says, per ground-truth unit, what the labeller's labels of the training span did
with it: which labeller units hold its spikes (`oversplit`: two or more), whether the one paired
with it was dropped by the quality filter (its spikes then are not E-Sort's positives), whether
none was paired (`missed`). `oracle_threshold` sweeps the post-processing threshold on the
SCORED span against ground truth: how much a perfect threshold would add. It reads the truth of
the span results are reported on, so it only tells whether the threshold is a cause; the
pipeline's threshold is always chosen on labelled training data. `spike_misses` says, for
chosen ground-truth units, how a sorting misses their spikes: how many, how many of those were
crowded (another unit within `crowd_um` spiked within `crowd_ms`), went to a neighbouring unit
of the sorting, or were not detected at all. `without_duplicates` measures what dropping the
weaker of two neighbouring units' detections of one spike would change (esort_jax.duplicate_spikes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from esort_jax.duplicate_spikes import DEFAULT_RADII_UM, choose_radius_and_threshold, duplicate_mask, unit_positions
from esort_jax.evaluate import evaluate, match_count_matrix, tolerance_to_samples
from esort_jax.recording import Sorting

if TYPE_CHECKING:
    from esort_jax.realdata.workflow import LabelledSort

__all__ = ["label_flags", "oracle_threshold", "spike_misses", "without_duplicates"]


def label_flags(labels: Sorting, kept: np.ndarray, truth: Sorting, span: tuple[int, int], *,
                tolerance_ms: float = 0.4, share: float = 0.5) -> dict:
    """Per truth unit (truth.unit_ids order) over `span`: `labeller_units` (labeller units with
    at least `share` of their spikes on this unit), `oversplit` (two or more), `paired_unit`
    (the labeller unit paired by agreement, SpikeInterface's rule, or None), `paired_dropped`
    (that unit is not in `kept`, the quality filter's [N_labels] mask), `missed` (no pair)."""
    labels_in, truth_in = labels.in_span(*span), truth.in_span(*span)
    delta = tolerance_to_samples(tolerance_ms, truth.sampling_frequency)
    counts = match_count_matrix(truth_in.samples, truth_in.unit_indices, labels_in.samples,
                                labels_in.unit_indices, truth.num_units, labels.num_units, delta)
    sizes = np.maximum(labels_in.spike_counts(), 1)
    owner = np.where(counts.max(axis=0) >= share * sizes, counts.argmax(axis=0), -1) if truth.num_units else []
    paired = evaluate(labels, truth, tolerance_ms=tolerance_ms, identities="unknown", span=span).pred_index
    out = {"unit_ids": truth.unit_ids.tolist(), "labeller_units": [], "oversplit": [], "paired_unit": [],
           "paired_dropped": [], "missed": []}
    for u in range(truth.num_units):
        mine = np.flatnonzero(np.asarray(owner) == u)
        out["labeller_units"].append(labels.unit_ids[mine].tolist())
        out["oversplit"].append(bool(mine.size >= 2))
        k = int(paired[u])
        out["paired_unit"].append(None if k < 0 else np.asarray(labels.unit_ids[k]).item())
        out["paired_dropped"].append(bool(k >= 0 and not kept[k]))
        out["missed"].append(bool(k < 0))
    return out


def oracle_threshold(sorting: Sorting, scores: np.ndarray, truth: Sorting, span: tuple[int, int],
                     thresholds: Sequence[float], *, tolerance_ms: float = 0.4) -> dict:
    """The threshold a sort at the lowest threshold (`sorting`, its spikes' `scores`) would
    score best with against `truth` on `span` (per-unit mean accuracy, identities unknown), and
    the curve. DIAGNOSIS ONLY: it is tuned on the scored span."""
    curve = []
    for value in sorted(float(t) for t in thresholds):
        kept = sorting.select_spikes(np.asarray(scores) >= np.float32(value))
        result = evaluate(kept, truth, tolerance_ms=tolerance_ms, identities="unknown", span=span)
        curve.append({"threshold": value, "accuracy_mean": result.accuracy_mean,
                      "accuracy_pooled": result.accuracy_pooled, "well_detected": result.well_detected})
    best = max(curve, key=lambda c: -1.0 if np.isnan(c["accuracy_mean"]) else c["accuracy_mean"])
    return {"threshold": best["threshold"], "accuracy_mean": best["accuracy_mean"],
            "accuracy_pooled": best["accuracy_pooled"], "well_detected": best["well_detected"], "curve": curve}


def _nearest_distance(sorted_samples: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Per sample, the distance to the nearest of `sorted_samples` (a large number if none)."""
    out = np.full(samples.shape, np.iinfo(np.int64).max, dtype=np.int64)
    j = np.searchsorted(sorted_samples, samples)
    for k in (j - 1, j):
        ok = (k >= 0) & (k < sorted_samples.size)
        out[ok] = np.minimum(out[ok], np.abs(sorted_samples[k[ok]] - samples[ok]))
    return out


def spike_misses(sorting: Sorting, truth: Sorting, span: tuple[int, int], unit_locations: np.ndarray, *,
                 units: Sequence[int] | None = None, tolerance_ms: float = 0.4, crowd_ms: float = 1.0,
                 crowd_um: float = 60.0) -> dict:
    """How `sorting` misses the spikes of the ground-truth units `units` (indices into truth;
    default all) in `span`. Each unit is paired as `evaluate` pairs it (identities unknown); a
    spike is missed when its paired unit has no spike within `tolerance_ms`.

    `unit_locations` [N_truth, 2 or 3] (µm) places the truth units; each unit of `sorting` sits
    where the truth unit it shares most spikes with does. A spike is `crowded` when a spike of
    another truth unit within `crowd_um` lies within `crowd_ms`. A missed spike went `to_neighbour`
    when another unit of `sorting` placed within `crowd_um` has a spike within `tolerance_ms`,
    else it is `undetected`. Spikes of units without a pair count as `unit_lost` (not in the
    other counts). Returns counts and rates (NaN when there are no spikes)."""
    delta = tolerance_to_samples(tolerance_ms, truth.sampling_frequency)
    window = int(round(crowd_ms * truth.sampling_frequency / 1000.0))
    locations = np.asarray(unit_locations, dtype=np.float64)
    if locations.shape[0] != truth.num_units:
        raise ValueError(f"unit_locations has {locations.shape[0]} rows for {truth.num_units} truth units")
    units = np.arange(truth.num_units) if units is None else np.asarray(units, dtype=np.int64)
    paired = evaluate(sorting, truth, tolerance_ms=tolerance_ms, identities="unknown", span=span).pred_index
    truth_in, sorted_in = truth.in_span(*span), sorting.in_span(*span)
    counts = match_count_matrix(truth_in.samples, truth_in.unit_indices, sorted_in.samples,
                                sorted_in.unit_indices, truth.num_units, sorting.num_units, delta)
    owner = counts.argmax(axis=0) if truth.num_units and sorting.num_units else np.zeros(0, dtype=np.int64)
    has_owner = counts.max(axis=0) > 0 if counts.size else np.zeros(sorting.num_units, dtype=bool)
    close = np.linalg.norm(locations[:, None, :] - locations[None, :, :], axis=-1) <= crowd_um  # [N, N]
    tally = dict.fromkeys(("spikes", "missed", "crowded", "missed_crowded", "to_neighbour", "undetected",
                           "unit_lost"), 0)
    for u in units.tolist():
        mine = truth_in.unit_samples(u)
        if not mine.size:
            continue
        neighbours = np.flatnonzero(close[u])
        others = np.sort(truth_in.samples[np.isin(truth_in.unit_indices, neighbours[neighbours != u])])
        crowded = _nearest_distance(others, mine) <= window
        k = int(paired[u])
        if k < 0:
            tally["unit_lost"] += int(mine.size)
            continue
        own = np.sort(sorted_in.unit_samples(k))
        missed = _nearest_distance(own, mine) > delta
        near_units = np.flatnonzero(has_owner & np.isin(owner, neighbours))
        near = np.sort(sorted_in.samples[np.isin(sorted_in.unit_indices, near_units[near_units != k])])
        went = missed & (_nearest_distance(near, mine) <= delta)
        tally["spikes"] += int(mine.size)
        tally["crowded"] += int(crowded.sum())
        tally["missed"] += int(missed.sum())
        tally["missed_crowded"] += int((missed & crowded).sum())
        tally["to_neighbour"] += int(went.sum())
        tally["undetected"] += int((missed & ~went).sum())

    def rate(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {**tally, "units": int(units.size), "missed_rate": rate(tally["missed"], tally["spikes"]),
            "missed_rate_crowded": rate(tally["missed_crowded"], tally["crowded"]),
            "missed_rate_isolated": rate(tally["missed"] - tally["missed_crowded"], tally["spikes"] - tally["crowded"]),
            "tolerance_ms": tolerance_ms, "crowd_ms": crowd_ms, "crowd_um": crowd_um}


def without_duplicates(result: "LabelledSort", *, radii_um: Sequence[float] = DEFAULT_RADII_UM,
                       window_ms: float = 0.4, seed: int = 0) -> "LabelledSort":
    """`result` (workflow.esort_from_labels) with the duplicate detections of neighbouring units
    dropped (esort_jax.duplicate_spikes), to measure what one spike, one unit would change: the
    whole recording sorted again at the sweep's lowest threshold, each unit placed where its
    labelled spikes in the training span are largest, and the pair (radius, threshold) chosen on
    the validation tail of the training span against the labels by the threshold sweep's own rule
    (radius 0 = off; smaller radius first). The network is not trained again.

    Measured at 384 channels and not adopted (docs/claims.md, section 0): the pipeline, its
    checkpoints and experiments/sort.py never drop duplicates. The returned result's `sorted` is
    the lower-threshold sort; `threshold_curve['duplicates']` holds the grid, the choice, the
    detections each radius dropped and the unit positions; `seconds['duplicates']` the cost."""
    import dataclasses
    import time

    from esort_jax import pipeline
    from esort_jax.evaluate import scored_span

    started = time.perf_counter()
    config = result.config
    window_samples = int(round(float(window_ms) * result.recording.sampling_frequency / 1000.0))
    fixed = config.evaluation.threshold
    thresholds = [float(fixed)] if fixed is not None else sorted(float(t) for t in config.evaluation.thresholds)
    low = pipeline.sort(result.fitted, result.recording, config, threshold=thresholds[0],
                        span=(0, result.recording.num_samples), split=result.train_end)
    labels = result.selection.sorting
    unit_labels = labels.select_units(labels.unit_index_of(low.sorting.unit_ids))
    positions = unit_positions(result.recording, unit_labels, (0, result.train_end), seed=seed)
    model = result.fitted.model.config
    validation = scored_span(tuple(result.fitted.windows.validation_span), window=model.window, anchor=model.anchor)
    radius, threshold, curve = choose_radius_and_threshold(
        low.sorting, low.scores, labels, validation, thresholds, positions, radii_um=radii_um,
        window_samples=window_samples, metric=config.evaluation.threshold_metric,
        tolerance_ms=config.evaluation.tolerance_ms, within=config.evaluation.threshold_tolerance)
    above = low.scores >= np.float32(threshold)
    drop = duplicate_mask(low.sorting.samples, low.sorting.unit_indices, low.scores, positions,
                          radius_um=radius, window_samples=window_samples)
    curve["dropped_whole_recording"] = int((drop & above).sum())
    curve["unit_positions_um"] = [[float(x) for x in p] if np.isfinite(p).all() else None for p in positions]
    keep = above & ~drop
    return dataclasses.replace(
        result, sorting=low.sorting.select_spikes(keep), scores=low.scores[keep], threshold=threshold,
        threshold_curve={**result.threshold_curve, "duplicates": curve}, sorted=low,
        seconds={**result.seconds, "duplicates": time.perf_counter() - started})
