"""Label-efficiency curves: aggregation over seeds, interpolation in log K, label reduction.

Pure numpy on plain rows (dicts), no Hydra, no plotting. A row is one fine-tuning run:

    {"seed": 0, "k": 5, "arm": "transfer", "accuracy_pooled": 0.71, ...}

    summary = aggregate(rows, ["accuracy_pooled", "accuracy_mean"])      # mean/std per (k, arm)
    ks, t, _ = curve(summary, "transfer", "accuracy_pooled")
    _, s, _ = curve(summary, "scratch", "accuracy_pooled")
    reductions = label_reduction(ks, t, s)        # K_scratch / K_transfer at transfer's levels
    reduction_headline(reductions)["text"]        # "transfer needs 2.3x fewer labelled spikes ..."

A label-efficiency run (experiments/label_efficiency.py) keeps one `result_row` per seed x K x
arm and `summarise`s them into its results.json (summary, by_k, gain, label_reduction).

K needed to reach an accuracy level is read off a curve by linear interpolation in log K
between the measured K values, at the curve's FIRST crossing of the level. Two cases are
censored and reported as such rather than invented:
  * 'first': the curve already reaches the level at its smallest K (the K needed is at most
    that; a ratio built on it is a bound, not a value);
  * 'never': the curve stays below the level up to its largest K.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = [
    "ARMS",
    "SUMMARY_METRICS",
    "LEADING_COLUMNS",
    "mean_std",
    "aggregate",
    "curve",
    "paired_gain",
    "Reach",
    "k_to_reach",
    "label_reduction",
    "reduction_at",
    "reduction_headline",
    "result_row",
    "summarise",
]

ARMS = ("transfer", "scratch")
# Aggregated over seeds (mean and std) per K and arm.
SUMMARY_METRICS = (
    "accuracy_pooled", "accuracy_mean", "accuracy_median", "precision_pooled", "recall_pooled",
    "well_detected", "window_jaccard",
)
LEADING_COLUMNS = ("seed", "k", "arm")  # a row's identity, first in label_efficiency.csv


def _finite(values: Iterable[Any]) -> np.ndarray:
    out = [float(v) for v in values if v is not None and np.isfinite(float(v))]
    return np.asarray(out, dtype=np.float64)


def mean_std(values: Iterable[Any]) -> dict:
    """{'mean', 'std', 'n'} of the finite values (None / NaN skipped).

    std is the sample standard deviation (ddof=1) over seeds, 0.0 for a single value; mean and
    std are None when no value is finite.
    """
    x = _finite(values)
    if x.size == 0:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    return {"mean": float(np.mean(x)), "std": std, "n": int(x.size)}


def aggregate(rows: Sequence[dict], metrics: Sequence[str], by: Sequence[str] = ("k", "arm")) -> list[dict]:
    """One row per distinct value of `by` (sorted), with `<metric>_mean`, `<metric>_std` and
    `n_seeds` (rows in the group)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[b] for b in by), []).append(row)
    out = []
    for key in sorted(groups, key=lambda k: tuple((str(type(v)), v) for v in k)):
        members = groups[key]
        entry = dict(zip(by, key))
        entry["n_seeds"] = len(members)
        for metric in metrics:
            stats = mean_std(m.get(metric) for m in members)
            entry[f"{metric}_mean"] = stats["mean"]
            entry[f"{metric}_std"] = stats["std"]
        out.append(entry)
    return out


def curve(summary: Sequence[dict], arm: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K [n], mean [n], std [n]) of one arm from `aggregate` rows, sorted by K (NaN = missing)."""
    rows = sorted((r for r in summary if r["arm"] == arm), key=lambda r: r["k"])
    nan = float("nan")
    ks = np.asarray([r["k"] for r in rows], dtype=np.float64)
    mean = np.asarray([nan if r.get(f"{metric}_mean") is None else r[f"{metric}_mean"] for r in rows])
    std = np.asarray([nan if r.get(f"{metric}_std") is None else r[f"{metric}_std"] for r in rows])
    return ks, mean.astype(np.float64), std.astype(np.float64)


def paired_gain(
    rows: Sequence[dict], metric: str, arms: tuple[str, str] = ("transfer", "scratch")
) -> list[dict]:
    """Per K: the gain arms[0] - arms[1] in `metric`, paired by seed; mean, std (ddof=1), n."""
    by_key: dict[tuple, float] = {}
    for row in rows:
        value = row.get(metric)
        if row["arm"] in arms and value is not None and np.isfinite(float(value)):
            by_key[(row["k"], row["seed"], row["arm"])] = float(value)
    ks = sorted({k for k, _, _ in by_key})
    out = []
    for k in ks:
        seeds = sorted({s for kk, s, _ in by_key if kk == k})
        diffs = [
            by_key[(k, s, arms[0])] - by_key[(k, s, arms[1])]
            for s in seeds
            if (k, s, arms[0]) in by_key and (k, s, arms[1]) in by_key
        ]
        out.append({"k": k, **mean_std(diffs)})
    return out


@dataclasses.dataclass(frozen=True)
class Reach:
    """Labelled spikes per unit a curve needs to reach a level.

    status: 'interpolated' (between two measured K, in log K), 'exact' (at a measured K),
    'first' (already reached at the smallest K: k is an upper bound) or 'never' (k is None).
    """

    k: float | None
    status: str


def k_to_reach(ks: Sequence[float], values: Sequence[float], level: float) -> Reach:
    """K at which the curve first reaches `level`, interpolating linearly in log K.

    Points with a missing (NaN) value are skipped; K must be positive.
    """
    ks = np.asarray(ks, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if ks.shape != values.shape:
        raise ValueError(f"ks {ks.shape} and values {values.shape} differ in shape")
    ok = np.isfinite(values) & np.isfinite(ks)
    ks, values = ks[ok], values[ok]
    order = np.argsort(ks, kind="stable")
    ks, values = ks[order], values[order]
    if ks.size == 0:
        return Reach(None, "never")
    if np.any(ks <= 0):
        raise ValueError(f"K must be > 0 to interpolate in log K; got {ks.tolist()}")
    if values[0] >= level:
        return Reach(float(ks[0]), "first")
    for i in range(1, ks.size):
        if values[i] >= level:
            v0, v1 = values[i - 1], values[i]
            if values[i] == level:
                return Reach(float(ks[i]), "exact")
            frac = (level - v0) / (v1 - v0)
            log_k = math.log(ks[i - 1]) + frac * (math.log(ks[i]) - math.log(ks[i - 1]))
            return Reach(float(math.exp(log_k)), "interpolated")
    return Reach(None, "never")


def reduction_at(ks: Sequence[float], transfer: Sequence[float], scratch: Sequence[float], level: float) -> dict:
    """How many fewer labels transfer needs than scratch to reach `level`.

    Returns {level, k_transfer, transfer_status, k_scratch, scratch_status, ratio, bound}:
      ratio = k_scratch / k_transfer;
      bound = 'exact' when both Ks are measured or interpolated; 'upper' when scratch reaches
        the level already at the smallest K (ratio is at most this); 'lower' when transfer does
        (ratio is at least this); None when the ratio is undetermined (both at the smallest K,
        or a curve never reaches the level).
      When scratch never reaches the level, ratio is None and `ratio_lower_bound` =
      max K / k_transfer ("scratch needs more than the largest K measured").
    """
    t = k_to_reach(ks, transfer, level)
    s = k_to_reach(ks, scratch, level)
    out: dict[str, Any] = {
        "level": float(level),
        "k_transfer": t.k,
        "transfer_status": t.status,
        "k_scratch": s.k,
        "scratch_status": s.status,
        "ratio": None,
        "bound": None,
    }
    if t.status == "never":
        return out
    if s.status == "never":
        finite = [k for k, v in zip(ks, scratch) if v is not None and np.isfinite(v)]
        if finite:
            out["ratio_lower_bound"] = float(max(finite)) / t.k
        return out
    if t.status == "first" and s.status == "first":
        return out
    out["ratio"] = s.k / t.k
    out["bound"] = "upper" if s.status == "first" else ("lower" if t.status == "first" else "exact")
    return out


def label_reduction(
    ks: Sequence[float],
    transfer: Sequence[float],
    scratch: Sequence[float],
    levels: Sequence[float] | None = None,
) -> list[dict]:
    """`reduction_at` for each level; by default the levels transfer reaches at each measured K
    (its mean accuracies), i.e. "scratch needs K_scratch labels to match transfer at K"."""
    if levels is None:
        levels = [v for v in transfer if v is not None and np.isfinite(v)]
    return [reduction_at(ks, transfer, scratch, level) for level in levels]


def reduction_headline(reductions: Sequence[dict]) -> dict:
    """One number from several levels: the geometric mean of the exact ratios.

    Returns {ratio (None if no exact ratio), n_exact, n_never, n_bounded, n_undetermined, text}. 'never' levels are reported separately, never folded into the
    mean.
    """
    exact = [r["ratio"] for r in reductions if r["bound"] == "exact"]
    never = [r for r in reductions if r["scratch_status"] == "never" and r["transfer_status"] != "never"]
    bounded = [r for r in reductions if r["bound"] in ("upper", "lower")]
    undetermined = len(reductions) - len(exact) - len(never) - len(bounded)
    ratio = float(np.exp(np.mean(np.log(exact)))) if exact else None
    parts = []
    if ratio is not None:
        what = "fewer" if ratio >= 1 else "more"
        factor = ratio if ratio >= 1 else 1 / ratio
        parts.append(
            f"transfer needs {factor:.1f}x {what} labelled spikes than scratch "
            f"(geometric mean over {len(exact)} accuracy level{'s' if len(exact) != 1 else ''})"
        )
    else:
        parts.append("no accuracy level gives an exact label-reduction ratio")
    if never:
        lows = [r["level"] for r in never]
        bound = min(r.get("ratio_lower_bound", float("inf")) for r in never)
        parts.append(
            f"scratch never reaches {len(never)} level{'s' if len(never) != 1 else ''} transfer reaches "
            f"({', '.join(f'{v:.3f}' for v in lows)}): there the reduction is > {bound:.1f}x"
        )
    if bounded:
        parts.append(f"{len(bounded)} level{'s' if len(bounded) != 1 else ''} only bounded (reached at the smallest K)")
    return {
        "ratio": ratio,
        "n_exact": len(exact),
        "n_never": len(never),
        "n_bounded": len(bounded),
        "n_undetermined": undetermined,
        "text": "; ".join(parts),
    }


# ----------------------------------------------------------------------------------------------
# A label-efficiency run: its rows and their summary


def result_row(seed: int, k: int, arm: str, metrics: dict) -> dict:
    """One CSV/results row: every scalar metric of an arm plus training and short-unit counts."""
    row: dict[str, Any] = {"seed": seed, "k": k, "arm": arm}
    for key, value in metrics.items():
        if key in LEADING_COLUMNS:
            continue
        if value is None or isinstance(value, (int, float, str, bool)):
            row[key] = value
    short = metrics.get("short_units") or {}
    row["short_units"] = len(short.get("unit_ids", []))
    row["short_units_policy"] = short.get("policy")
    training = metrics.get("training") or {}
    row["train_windows"] = training.get("train_windows")
    row["epochs"] = training.get("epochs")
    return row


def summarise(rows: Sequence[dict], arms: Sequence[str], metric: str, reference: float | None) -> dict:
    """summary (per K and arm), by_k, gain and label reduction (at `reference` too) from the rows."""
    out: dict[str, Any] = {"summary": aggregate(rows, SUMMARY_METRICS)}
    # The same numbers keyed for flattening (summarize.py: `by_k.k5.transfer.accuracy_pooled_mean`).
    out["by_k"] = {}
    for entry in out["summary"]:
        cell = {key: value for key, value in entry.items() if key not in ("k", "arm")}
        out["by_k"].setdefault(f"k{entry['k']}", {})[entry["arm"]] = cell
    if "transfer" in arms and "scratch" in arms:
        out["gain"] = {m: paired_gain(rows, m) for m in ("accuracy_pooled", "accuracy_mean")}
        for m, gains in out["gain"].items():
            for g in gains:
                out["by_k"][f"k{g['k']}"][f"gain_{m}"] = {"mean": g["mean"], "std": g["std"], "n": g["n"]}
        out["label_reduction"] = _label_reduction(out["summary"], metric, reference)
    return out


def _label_reduction(summary: Sequence[dict], metric: str, reference: float | None) -> dict:
    ks, transfer, _ = curve(summary, "transfer", metric)
    _, scratch, _ = curve(summary, "scratch", metric)
    ks_list = [int(k) for k in ks]
    reductions = label_reduction(ks_list, transfer.tolist(), scratch.tolist())
    for entry, k in zip(reductions, [k for k, v in zip(ks_list, transfer) if v == v]):
        entry["at_k"] = k
    out = {"metric": metric, "levels": reductions, "headline": reduction_headline(reductions)}
    if reference is not None:
        out["reference"] = reduction_at(ks_list, transfer.tolist(), scratch.tolist(), float(reference))
    return out
