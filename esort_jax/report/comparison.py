"""E-Sort side by side with conventional sorters: rows, a text table, speed ratios and the
labelled spikes per unit E-Sort needs to match a sorter's accuracy.

Pure functions on plain dicts (no Hydra, no plotting). A row is one method on one recording:

    {"method": "kilosort4", "kind": "sorter", "arm": None, "k": None,
     "accuracy_pooled": 0.81, ..., "sort_seconds": 512.0, "sorted_duration_s": 15.0}
    {"method": "transfer K=5", "kind": "esort", "arm": "transfer", "k": 5, ...}

    rows = [method_row(...), ...]
    print(comparison_table(rows))
    speed_ratios(rows)                     # sorter seconds / E-Sort seconds per second of data
    k_to_reach_level(rows, 0.81)           # K transfer and scratch need, and their ratio

Speed is compared per second of sorted data (a sorter may sort the whole recording while E-Sort
sorts the held-out half); E-Sort's time is its sort (inference + post-processing) time, the
median over its arms (they share the network shape, so they cost the same). Fine-tuning time is
reported beside it (`train_seconds`), not folded in.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from esort_jax.report import curves

__all__ = [
    "METRIC_KEYS",
    "REACH_METRICS",
    "method_row",
    "comparison_table",
    "esort_seconds_per_data_second",
    "speed_ratios",
    "k_to_reach_level",
]

# Scalar metrics every row carries (None when not applicable or not measured).
METRIC_KEYS = (
    "accuracy_pooled", "accuracy_mean", "accuracy_median", "precision_pooled", "recall_pooled",
    "well_detected", "n_units", "num_units_found", "sort_seconds", "sorted_duration_s",
    "train_seconds", "sorter_version",
)
# Metrics a "K needed to reach" level may be taken from.
REACH_METRICS = ("accuracy_pooled", "accuracy_mean", "accuracy_median")
ESORT_ARMS = ("transfer", "scratch")


def method_row(method: str, kind: str, metrics: dict, *, arm: str | None = None, k: int | None = None) -> dict:
    """One comparison row: identity (method, kind 'sorter'|'esort', arm, k, status) and the
    METRIC_KEYS of `metrics` (missing ones None)."""
    if kind not in ("sorter", "esort"):
        raise ValueError(f"kind must be 'sorter' or 'esort'; got {kind!r}")
    row: dict[str, Any] = {"method": method, "kind": kind, "arm": arm, "k": k,
                           "status": metrics.get("status", "ok")}
    for key in METRIC_KEYS:
        row[key] = metrics.get(key)
    if metrics.get("error"):
        row["error"] = metrics["error"]
    return row


def _ok(row: dict) -> bool:
    return row.get("status", "ok") == "ok"


def _seconds_per_data_second(row: dict) -> float | None:
    seconds, duration = row.get("sort_seconds"), row.get("sorted_duration_s")
    if seconds is None or not duration:
        return None
    return float(seconds) / float(duration)


def esort_seconds_per_data_second(rows: Sequence[dict]) -> float | None:
    """Median over E-Sort rows of sort seconds per second of sorted data (None: no E-Sort row)."""
    values = [v for r in rows if r["kind"] == "esort" and _ok(r)
              for v in [_seconds_per_data_second(r)] if v is not None]
    return float(np.median(values)) if values else None


def speed_ratios(rows: Sequence[dict]) -> dict[str, float | None]:
    """Per sorter: its seconds per second of data / E-Sort's (how many times slower the sorter
    is); None when the sorter failed or there is no E-Sort row."""
    esort = esort_seconds_per_data_second(rows)
    out: dict[str, float | None] = {}
    for row in rows:
        if row["kind"] != "sorter":
            continue
        own = _seconds_per_data_second(row) if _ok(row) else None
        out[row["method"]] = own / esort if own is not None and esort else None
    return out


def _curve(rows: Sequence[dict], arm: str, metric: str) -> tuple[list[float], list[float]]:
    points = sorted((r["k"], r.get(metric)) for r in rows if r["kind"] == "esort" and r["arm"] == arm and _ok(r))
    ks = [float(k) for k, _ in points]
    values = [float("nan") if v is None else float(v) for _, v in points]
    return ks, values


def _reach_text(reach: dict, largest: float | None) -> str:
    if reach["status"] == "never":
        return f"> {largest:g} (never within the measured K)" if largest else "never"
    if reach["status"] == "first":
        return f"<= {reach['k']:g} (already at the smallest K)"
    return f"{reach['k']:.1f}"


def k_to_reach_level(rows: Sequence[dict], level: float, metric: str = "accuracy_pooled") -> dict:
    """Labelled spikes per unit the E-Sort arms need to reach `level` of `metric`.

    Reads each arm's curve over K from the rows (linear in log K between measured K, first
    crossing; `esort_jax.report.curves.k_to_reach`) and the ratio K_scratch / K_transfer with its
    censoring (`esort_jax.report.curves.reduction_at`). Returns {level, metric, ks, transfer: {k,
    status}, scratch: {k, status}, ratio, bound, ratio_lower_bound (when scratch never gets
    there), text}. An arm without rows has k None and status 'missing'.
    """
    if metric not in REACH_METRICS:
        raise ValueError(f"metric must be one of {list(REACH_METRICS)}; got {metric!r}")
    if level is None or not math.isfinite(float(level)):
        raise ValueError(f"level must be a finite number; got {level!r}")
    level = float(level)
    out: dict[str, Any] = {"level": level, "metric": metric}
    curves_by_arm = {arm: _curve(rows, arm, metric) for arm in ESORT_ARMS}
    largest = max((max(ks) for ks, _ in curves_by_arm.values() if ks), default=None)
    for arm, (ks, values) in curves_by_arm.items():
        if not ks:
            out[arm] = {"k": None, "status": "missing"}
            continue
        reach = curves.k_to_reach(ks, values, level)
        out[arm] = {"k": reach.k, "status": reach.status}
    out["ratio"] = None
    out["bound"] = None
    t_ks, t_values = curves_by_arm["transfer"]
    s_ks, s_values = curves_by_arm["scratch"]
    if t_ks and s_ks and t_ks == s_ks:
        reduction = curves.reduction_at(t_ks, t_values, s_values, level)
        out["ratio"] = reduction["ratio"]
        out["bound"] = reduction["bound"]
        if "ratio_lower_bound" in reduction:
            out["ratio_lower_bound"] = reduction["ratio_lower_bound"]
    parts = [f"{metric} {level:.3f}:"]
    for arm in ESORT_ARMS:
        if out[arm]["status"] != "missing":
            parts.append(f"{arm} needs K {_reach_text(out[arm], largest)}")
    if out["ratio"] is not None:
        relation = {"exact": "=", "upper": "<=", "lower": ">="}[out["bound"]]
        parts.append(f"scratch / transfer {relation} {out['ratio']:.2f}x")
    elif out.get("ratio_lower_bound"):
        parts.append(f"scratch / transfer > {out['ratio_lower_bound']:.2f}x")
    out["text"] = " ".join(parts[:1]) + " " + "; ".join(parts[1:])
    return out


def _cell(value: Any, fmt: str, width: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f"{'-':>{width}}"
    return fmt.format(value)


TABLE_COLUMNS = (
    # key, header, format, width
    ("accuracy_pooled", "acc_pool", "{:>8.3f}", 8),
    ("accuracy_mean", "acc_mean", "{:>8.3f}", 8),
    ("accuracy_median", "acc_med", "{:>8.3f}", 8),
    ("precision_pooled", "prec", "{:>6.3f}", 6),
    ("recall_pooled", "recall", "{:>6.3f}", 6),
    ("well_detected", "well", "{:>5d}", 5),
    ("num_units_found", "found", "{:>5d}", 5),
    ("n_units", "units", "{:>5d}", 5),
    ("sort_seconds", "sort_s", "{:>9.2f}", 9),
    ("train_seconds", "train_s", "{:>8.1f}", 8),
)


def comparison_table(rows: Sequence[dict]) -> str:
    """The rows as a fixed-width text table; a failed method shows its status instead of numbers,
    and sorters get their speed ratio against E-Sort (`x_esort`)."""
    ratios = speed_ratios(rows)
    width = max([16] + [len(r["method"]) for r in rows])
    header = f"{'method':<{width}} " + " ".join(f"{h:>{w}}" for _, h, _, w in TABLE_COLUMNS) + f" {'x_esort':>8}"
    lines = [header, "-" * len(header)]
    for row in rows:
        name = f"{row['method']:<{width}}"
        if not _ok(row):
            lines.append(f"{name} {row['status']}: {str(row.get('error', '')).splitlines()[0][:80] if row.get('error') else ''}")
            continue
        cells = [_cell(row.get(key), fmt, w) for key, _, fmt, w in TABLE_COLUMNS]
        ratio = ratios.get(row["method"]) if row["kind"] == "sorter" else None
        cells.append(_cell(ratio, "{:>8.1f}", 8))
        lines.append(f"{name} " + " ".join(cells))
    return "\n".join(lines)
