"""Why E-Sort scores below its labeller on a unit: diagnostics against ground truth (issue 17).

    flags = label_flags(labels.sorting, selection.kept, truth, (0, train_end))
    best = oracle_threshold(result, truth, thresholds)   # a diagnosis, never a reported result

`label_flags` says, per ground-truth unit, what the labeller's labels of the training span did
with it: which labeller units hold its spikes (`oversplit`: two or more), whether the one paired
with it was dropped by the quality filter (its spikes then are not E-Sort's positives), whether
none was paired (`missed`). `oracle_threshold` sweeps the post-processing threshold on the
SCORED span against ground truth: how much a perfect threshold would add. It reads the truth of
the span results are reported on, so it only tells whether the threshold is a cause; the
pipeline's threshold is always chosen on labelled training data.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from esort_jax.evaluate import evaluate, match_count_matrix, tolerance_to_samples
from esort_jax.recording import Sorting

__all__ = ["label_flags", "oracle_threshold"]


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
