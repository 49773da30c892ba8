"""Ground-truth comparison: match predicted spikes to true spikes, per unit and pooled.

Matching reproduces SpikeInterface 0.105's `compare_sorter_to_ground_truth` (count-based
agreement, `ensure_symmetry=False`) with vectorised numpy; no Python loop over spikes.

Tolerance. `delta = int(tolerance_ms / 1000 * fs)` samples (SpikeInterface's truncating
conversion: 0.4 ms at 32 kHz is 12 samples, at 30 kHz also 12); a true spike at t and a
predicted one at u may match when |t - u| <= delta (inclusive). `tolerance_samples` overrides
the conversion (the paper uses 30 samples).

Match count of a (true unit, predicted unit) pair: SpikeInterface's rule, exactly. Walk the
true unit's spikes in time order; each one takes the earliest predicted spike within ±delta
that is not the predicted spike matched most recently (if that is the only candidate, the
true spike is unmatched). Each true spike matches at most once; a predicted spike may be taken
again by a later true spike once a different predicted spike was matched in between (this
happens only when true spikes of one unit lie closer than about 2·delta, i.e. bursts), and
the pair's count is finally clipped to the predicted unit's spike count. The count is
therefore not always a maximum one-to-one matching, but it is what SpikeInterface reports,
which is what we want comparable numbers for. Implementation: the per-spike state of that
walk (is the last match the window's first or second candidate?) is a product of
reset / copy / flip maps, evaluated with cumulative sums (`match_count_matrix`).

Identities.
- "known" (E-Sort): predicted unit u IS true unit u; units are paired by equal unit id. A
  true unit without a predicted unit of its id has all its spikes as FN.
- "unknown" (another sorter's labels): SpikeInterface's default. Agreement score of a pair
  = M / (n_true + n_pred - M) with M the match count; scores below `match_score` (0.5) are set
  to 0, `scipy.optimize.linear_sum_assignment` maximises the total, and a pair is kept only if
  its score is >= match_score. Unpaired true units: tp = fp = 0, fn = all their spikes.

Per-unit numbers (one row per TRUE unit, as SpikeInterface's `count_score`): tp, fn =
num_gt - tp, fp = num_pred - tp (spikes of the paired predicted unit not matched; 0 when
unpaired). accuracy = tp / (tp + fp + fn), precision = tp / (tp + fp), recall = tp / (tp + fn);
like SpikeInterface all three are 0 when tp = 0. Unlike SpikeInterface (which reports 0),
they are NaN for a true unit with no spike in the evaluated span, and means / medians / the
well-detected count skip NaN units: a unit that does not fire there is not evidence either way.

Pooled (the paper's accuracy): ΣTP / (ΣTP + ΣFP + ΣFN) over true units, where ΣFP also
counts every spike of predicted units that are paired with no true unit (`unmatched_pred_spikes`;
with an exhaustive ground truth those are false detections). Pass `unmatched_pred_as_fp=False`
to leave them out (SpikeInterface's per-unit table never counts them).

"Well detected": units whose accuracy (= the pair's agreement score) is >= 0.8, as
SpikeInterface's `count_well_detected_units`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from esort_jax.config import require
from esort_jax.recording import Sorting

__all__ = [
    "EvaluationConfig",
    "EvaluationResult",
    "METRIC_ALIASES",
    "evaluate",
    "match_count_matrix",
    "scored_span",
    "tolerance_to_samples",
]

# Keys older results.json files used for a metric that now has one name (report.results.load_rows
# maps them when it reads a run folder).
METRIC_ALIASES = {"precision": "precision_pooled", "recall": "recall_pooled"}


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """How a fitted network is judged (conf/evaluation/).

    Attributes:
      tolerance_ms: spike matching tolerance (SpikeInterface default 0.4 ms; the paper used
        30 samples ≈ 0.94 ms at 32 kHz).
      threshold: a fixed post-processing threshold; None sweeps `thresholds` on the validation
        part of the training region and keeps the best by `threshold_metric`.
      thresholds: the sweep (paper: 0.5 … 2.9 with the peak-normalised 17-tap kernel).
      threshold_metric: what the sweep maximises.
      threshold_tolerance: the sweep keeps the LOWEST threshold whose `threshold_metric` is within
        this much of the best (0: the best itself). Labels from another sorter miss spikes, so
        E-Sort's true detections of those count against low thresholds; a tolerance leans the
        choice back toward recall (measured in docs/claims.md, section 0).
      window_metrics_max: windows of the evaluation span scored at window level (0: skip).
      heldout_recall_fraction: label_mode 'k_only' (no complete labels to sweep against): the
        threshold is the largest of `thresholds` keeping this fraction of the held-out recall of
        a 2-fold cross-validation over the K labelled spikes (threshold.heldout_recall_threshold).
    """

    tolerance_ms: float = 0.4
    threshold: float | None = None
    thresholds: tuple[float, ...] = tuple(round(0.5 + 0.2 * i, 2) for i in range(13))
    threshold_metric: str = "accuracy_pooled"
    threshold_tolerance: float = 0.0
    window_metrics_max: int = 16384
    heldout_recall_fraction: float = 0.9

    def validate(self, where: str = "evaluation") -> None:
        require(self.tolerance_ms > 0, f"{where}.tolerance_ms", f"must be > 0; got {self.tolerance_ms}")
        require(len(self.thresholds) > 0, f"{where}.thresholds", "must list at least one value")
        require(
            all(t > 0 for t in self.thresholds), f"{where}.thresholds", f"must be > 0; got {list(self.thresholds)}"
        )
        require(isinstance(self.threshold_tolerance, (int, float)) and math.isfinite(self.threshold_tolerance)
                and self.threshold_tolerance >= 0, f"{where}.threshold_tolerance",
                f"must be a finite number >= 0; got {self.threshold_tolerance!r}")
        require(self.window_metrics_max >= 0, f"{where}.window_metrics_max", "must be >= 0")
        require(0 < self.heldout_recall_fraction <= 1, f"{where}.heldout_recall_fraction",
                f"must lie in (0, 1]; got {self.heldout_recall_fraction}")


def scored_span(span: tuple[int, int], *, window: int, anchor: int) -> tuple[int, int]:
    """The samples a sort of `span` = [s0, s1) can report spikes at, and so where it is scored:
    the anchors of the windows lying inside it, [s0 + anchor, s1 - window + 1 + anchor).
    Baseline sorters and the labeller are scored on the same stretch."""
    s0, s1 = int(span[0]), int(span[1])
    return (s0 + anchor, s1 - window + 1 + anchor)


def tolerance_to_samples(tolerance_ms: float, sampling_frequency: float) -> int:
    """SpikeInterface's conversion: int(tolerance_ms / 1000 * fs) (truncates)."""
    return int(tolerance_ms / 1000 * sampling_frequency)


def _sorted_by_time(samples: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    samples = np.asarray(samples, dtype=np.int64).reshape(-1)
    units = np.asarray(units, dtype=np.int64).reshape(-1)
    order = np.lexsort((units, samples))
    return samples[order], units[order]


def match_count_matrix(
    gt_samples: np.ndarray,
    gt_units: np.ndarray,
    pred_samples: np.ndarray,
    pred_units: np.ndarray,
    num_gt_units: int,
    num_pred_units: int,
    delta: int,
    pair_mask: np.ndarray | None = None,
) -> np.ndarray:
    """SpikeInterface's match counts, [num_gt_units, num_pred_units] int64.

    Equals `spikeinterface.comparison.comparisontools.make_match_count_matrix(gt, pred,
    delta, ensure_symmetry=False)` (see the module docstring for the rule). `pair_mask`
    ([num_gt_units, num_pred_units] bool) restricts the computation to some pairs (others
    are 0): the "known identities" mode only needs the pairs with equal ids.
    """
    s1, u1 = _sorted_by_time(gt_samples, gt_units)
    s2, u2 = _sorted_by_time(pred_samples, pred_units)
    counts = np.zeros((num_gt_units, num_pred_units), dtype=np.int64)
    if s1.size == 0 or s2.size == 0:
        return counts
    # Rank of each predicted spike among its own unit's spikes (time order).
    by_unit = np.argsort(u2, kind="stable")
    spikes_per_unit2 = np.bincount(u2, minlength=num_pred_units)
    unit_start2 = np.cumsum(spikes_per_unit2) - spikes_per_unit2
    rank2 = np.empty_like(u2)
    rank2[by_unit] = np.arange(u2.size) - unit_start2[u2[by_unit]]

    # Every (true spike i, predicted spike j) with |s1[i] - s2[j]| <= delta.
    lo = np.searchsorted(s2, s1 - delta, side="left")
    hi = np.searchsorted(s2, s1 + delta, side="right")
    per_i = hi - lo
    total = int(per_i.sum())
    if total == 0:
        return counts
    i = np.repeat(np.arange(s1.size), per_i)
    j = lo[i] + np.arange(total) - np.repeat(np.cumsum(per_i) - per_i, per_i)
    pair = u1[i] * num_pred_units + u2[j]
    if pair_mask is not None:
        keep = np.asarray(pair_mask, dtype=bool).reshape(-1)[pair]
        i, j, pair = i[keep], j[keep], pair[keep]
        if pair.size == 0:
            return counts
    # Order by (pair, i, j): i and j are already increasing, so a stable sort on pair suffices.
    order = np.argsort(pair, kind="stable")
    i, j, pair = i[order], j[order], pair[order]
    # One element per (pair, true spike): its window in the predicted unit's own indexing is
    # [first, first + size): rank2 of its first candidate and the number of candidates.
    starts = np.flatnonzero(np.r_[True, (pair[1:] != pair[:-1]) | (i[1:] != i[:-1])])
    e_pair = pair[starts]
    e_first = rank2[j[starts]]
    e_two = np.diff(np.r_[starts, pair.size]) >= 2  # a second candidate exists
    new_pair = np.r_[True, e_pair[1:] != e_pair[:-1]]
    step = np.r_[0, np.diff(e_first)]  # >= 0 within a pair: windows only slide right
    # SpikeInterface keeps `last` = the predicted spike matched last for this pair. With
    # state s = last - first after an element (0 or 1), the next element's window start
    # moved by `step`; its first candidate is blocked iff last == its first, i.e. s == step.
    # New state: 1 if blocked and a second candidate exists (it is taken), else 0. So each
    # element applies reset (s=0), copy (step 1) or flip (step 0) to the previous state.
    reset = new_pair | ~e_two | (step > 1)
    flip = ~reset & (step == 0)
    flips = np.cumsum(flip)
    last_reset = np.maximum.accumulate(np.where(reset, np.arange(reset.size), 0))
    state = ((flips - flips[last_reset]) & 1).astype(bool)
    prev_state = np.r_[False, state[:-1]]
    blocked = ~new_pair & (((step == 0) & ~prev_state) | ((step == 1) & prev_state))
    matched = ~(blocked & ~e_two)
    counts = np.bincount(e_pair[matched], minlength=num_gt_units * num_pred_units)
    counts = counts.reshape(num_gt_units, num_pred_units).astype(np.int64)
    # SpikeInterface clips to the predicted unit's spike count (bursts in the true train).
    return np.minimum(counts, spikes_per_unit2[None, :])


def _agreement_scores(counts: np.ndarray, num_gt: np.ndarray, num_pred: np.ndarray) -> np.ndarray:
    denom = num_gt[:, None] + num_pred[None, :] - counts
    denom = np.where(denom == 0, -1, denom)  # SpikeInterface's trick: score 0 there
    return counts / denom


def _hungarian(scores: np.ndarray, min_score: float) -> np.ndarray:
    """pred index per true unit (-1 if none), as SpikeInterface's make_hungarian_match."""
    paired = np.full(scores.shape[0], -1, dtype=np.int64)
    if scores.size == 0:
        return paired
    thresholded = np.where(scores < min_score, 0.0, scores)
    rows, cols = linear_sum_assignment(-thresholded)
    keep = scores[rows, cols] >= min_score
    paired[rows[keep]] = cols[keep]
    return paired


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den > 0)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class EvaluationResult:
    """Per-true-unit counts and rates, with pooled and averaged summaries.

    Arrays have one entry per true unit (`unit_ids`, in the truth's order). `pred_index` is
    the paired predicted unit's index into `pred_unit_ids` (-1: none). Rates are NaN for
    units with num_gt == 0 (see the module docstring for every convention).
    """

    unit_ids: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    num_gt: np.ndarray
    num_pred: np.ndarray
    accuracy: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    pred_index: np.ndarray
    pred_unit_ids: np.ndarray
    unmatched_pred_spikes: int
    unmatched_pred_units: int
    tolerance_ms: float
    tolerance_samples: int
    identities: str
    span: tuple[int, int] | None = None
    unmatched_pred_as_fp: bool = True
    well_detected_score: float = 0.8

    # ---- pooled (the paper) -------------------------------------------------------------
    @property
    def tp_total(self) -> int:
        return int(self.tp.sum())

    @property
    def fn_total(self) -> int:
        return int(self.fn.sum())

    @property
    def fp_total(self) -> int:
        extra = self.unmatched_pred_spikes if self.unmatched_pred_as_fp else 0
        return int(self.fp.sum()) + int(extra)

    @property
    def accuracy_pooled(self) -> float:
        den = self.tp_total + self.fp_total + self.fn_total
        return self.tp_total / den if den else float("nan")

    @property
    def precision_pooled(self) -> float:
        den = self.tp_total + self.fp_total
        return self.tp_total / den if den else float("nan")

    @property
    def recall_pooled(self) -> float:
        den = self.tp_total + self.fn_total
        return self.tp_total / den if den else float("nan")

    # ---- per unit (SpikeInterface) ------------------------------------------------------
    @property
    def evaluated(self) -> np.ndarray:
        """[N] bool: true units with at least one spike in the span (rates defined)."""
        return self.num_gt > 0

    def _stat(self, values: np.ndarray, fn) -> float:
        v = values[self.evaluated]
        return float(fn(v)) if v.size else float("nan")

    @property
    def accuracy_mean(self) -> float:
        return self._stat(self.accuracy, np.mean)

    @property
    def accuracy_median(self) -> float:
        return self._stat(self.accuracy, np.median)

    @property
    def precision_mean(self) -> float:
        return self._stat(self.precision, np.mean)

    @property
    def recall_mean(self) -> float:
        return self._stat(self.recall, np.mean)

    @property
    def well_detected(self) -> int:
        return int(np.sum(self.evaluated & (self.accuracy >= self.well_detected_score)))

    @property
    def n_units(self) -> int:
        return int(self.unit_ids.size)

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-friendly summary (floats, ints, str; NaN stays NaN)."""
        return {
            "accuracy_pooled": float(self.accuracy_pooled),
            "precision_pooled": float(self.precision_pooled),
            "recall_pooled": float(self.recall_pooled),
            "accuracy_mean": self.accuracy_mean,
            "accuracy_median": self.accuracy_median,
            "precision_mean": self.precision_mean,
            "recall_mean": self.recall_mean,
            "well_detected": self.well_detected,
            "n_units": self.n_units,
            "n_units_evaluated": int(self.evaluated.sum()),
            "tolerance_ms": float(self.tolerance_ms),
            "tolerance_samples": int(self.tolerance_samples),
            "tp": self.tp_total,
            "fp": self.fp_total,
            "fn": self.fn_total,
            "unmatched_pred_units": int(self.unmatched_pred_units),
            "unmatched_pred_spikes": int(self.unmatched_pred_spikes),
            "identities": self.identities,
        }

    def per_unit(self) -> dict[str, list]:
        """Per true unit, JSON-friendly: its id, the paired predicted unit's id (`matched_unit`,
        None when unpaired), accuracy, precision, recall, tp, fp, fn, num_gt."""
        return {
            "unit_ids": np.asarray(self.unit_ids).tolist(),
            "matched_unit": [None if k < 0 else np.asarray(self.pred_unit_ids[k]).item() for k in self.pred_index],
            "accuracy": np.asarray(self.accuracy).tolist(),
            "precision": np.asarray(self.precision).tolist(),
            "recall": np.asarray(self.recall).tolist(),
            "tp": np.asarray(self.tp).tolist(),
            "fp": np.asarray(self.fp).tolist(),
            "fn": np.asarray(self.fn).tolist(),
            "num_gt": np.asarray(self.num_gt).tolist(),
        }


def evaluate(
    predicted: Sorting,
    truth: Sorting,
    *,
    tolerance_ms: float = 0.4,
    tolerance_samples: int | None = None,
    identities: Literal["known", "unknown"] = "known",
    span: tuple[int, int] | None = None,
    match_score: float = 0.5,
    well_detected_score: float = 0.8,
    unmatched_pred_as_fp: bool = True,
) -> EvaluationResult:
    """Compare `predicted` against `truth` (see the module docstring for the exact rules).

    Args:
      predicted, truth: spike trains with the same sampling frequency.
      tolerance_ms: matching window ±tolerance (converted like SpikeInterface).
      tolerance_samples: the window in samples, overriding `tolerance_ms` (paper: 30).
      identities: "known" pairs units by equal id (E-Sort); "unknown" pairs them by
        agreement with the Hungarian algorithm (any other sorter).
      span: (start, stop) — only spikes with start <= sample < stop of both sortings count.
      match_score: minimum agreement to pair units in "unknown" mode (SpikeInterface: 0.5).
      well_detected_score: accuracy threshold of `well_detected` (SpikeInterface: 0.8).
      unmatched_pred_as_fp: count spikes of unpaired predicted units as pooled FP.
    """
    delta, tolerance_ms = _check_inputs(predicted, truth, identities, tolerance_ms, tolerance_samples)
    if span is not None:
        start, stop = int(span[0]), int(span[1])
        if stop < start:
            raise ValueError(f"span must have start <= stop; got {span}")
        span = (start, stop)
        predicted = predicted.in_span(start, stop)
        truth = truth.in_span(start, stop)

    num_gt_all = truth.spike_counts().astype(np.int64)
    num_pred_all = predicted.spike_counts().astype(np.int64)
    if identities == "known":
        counts, paired = _pair_known(predicted, truth, delta)
    else:
        counts = match_count_matrix(
            truth.samples, truth.unit_indices, predicted.samples, predicted.unit_indices,
            truth.num_units, predicted.num_units, delta,
        )
        paired = _hungarian(_agreement_scores(counts, num_gt_all, num_pred_all), match_score)

    has = paired >= 0
    safe = np.where(has, paired, 0)
    n_true, n_pred = truth.num_units, predicted.num_units
    tp = np.where(has, counts[np.arange(n_true), safe] if n_pred else 0, 0).astype(np.int64)
    num_pred = np.where(has, num_pred_all[safe] if n_pred else 0, 0).astype(np.int64)
    fp, fn = num_pred - tp, num_gt_all - tp
    rates = [_ratio(tp, tp + fp + fn), _ratio(tp, tp + fp), _ratio(tp, tp + fn)]
    for rate in rates:  # accuracy, precision, recall
        rate[num_gt_all == 0] = np.nan
    used = np.zeros(n_pred, dtype=bool)
    used[paired[has]] = True
    return EvaluationResult(
        unit_ids=truth.unit_ids, tp=tp, fp=fp, fn=fn, num_gt=num_gt_all, num_pred=num_pred,
        accuracy=rates[0], precision=rates[1], recall=rates[2],
        pred_index=paired, pred_unit_ids=predicted.unit_ids,
        unmatched_pred_spikes=int(num_pred_all[~used].sum()), unmatched_pred_units=int((~used).sum()),
        tolerance_ms=float(tolerance_ms), tolerance_samples=delta, identities=identities, span=span,
        unmatched_pred_as_fp=unmatched_pred_as_fp, well_detected_score=well_detected_score,
    )


def _check_inputs(predicted, truth, identities, tolerance_ms, tolerance_samples) -> tuple[int, float]:
    """(tolerance in samples, in ms) after checking the sampling rates and the arguments."""
    fs = float(truth.sampling_frequency)
    if not np.isclose(float(predicted.sampling_frequency), fs, rtol=1e-9, atol=0.0):
        raise ValueError(
            f"sampling frequencies differ: predicted {predicted.sampling_frequency} Hz, truth {fs} Hz"
        )
    if identities not in ("known", "unknown"):
        raise ValueError(f"identities must be 'known' or 'unknown'; got {identities!r}")
    if tolerance_samples is None:
        if not tolerance_ms >= 0:
            raise ValueError(f"tolerance_ms must be >= 0; got {tolerance_ms}")
        return tolerance_to_samples(tolerance_ms, fs), tolerance_ms
    delta = int(tolerance_samples)
    if delta < 0:
        raise ValueError(f"tolerance_samples must be >= 0; got {tolerance_samples}")
    return delta, delta / fs * 1000.0


def _pair_known(predicted: Sorting, truth: Sorting, delta: int) -> tuple[np.ndarray, np.ndarray]:
    """(match counts [n_true, n_pred], paired predicted index per true unit or -1): units are
    paired by equal id."""
    n_true, n_pred = truth.num_units, predicted.num_units
    index_of_pred = {_key(u): k for k, u in enumerate(predicted.unit_ids.tolist())}
    if len(index_of_pred) != n_pred:
        raise ValueError("predicted unit_ids must be unique")
    paired = np.array([index_of_pred.get(_key(u), -1) for u in truth.unit_ids.tolist()], dtype=np.int64)
    mask = np.zeros((n_true, n_pred), dtype=bool)
    has = paired >= 0
    mask[np.flatnonzero(has), paired[has]] = True
    counts = match_count_matrix(
        truth.samples, truth.unit_indices, predicted.samples, predicted.unit_indices,
        n_true, n_pred, delta, pair_mask=mask,
    )
    return counts, paired


def _key(unit_id: Any) -> Any:
    """Hashable, type-tolerant key for a unit id (numpy ints and Python ints compare equal)."""
    if isinstance(unit_id, (np.generic,)):
        unit_id = unit_id.item()
    return unit_id
