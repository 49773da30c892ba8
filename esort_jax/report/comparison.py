"""E-Sort side by side with conventional sorters: rows, a text table, speed ratios and the
labelled spikes per unit E-Sort needs to match a sorter's accuracy.

Functions on plain dicts (no Hydra, no plotting; `write_comparison_csv` writes the CSV). A row is one method on one recording:

    {"method": "kilosort4", "kind": "sorter", "arm": None, "k": None,
     "accuracy_pooled": 0.81, ..., "sort_seconds": 512.0, "sorted_duration_s": 15.0}
    {"method": "transfer K=5", "kind": "esort", "arm": "transfer", "k": 5, ...}

    rows = [method_row(...), ...]
    print(comparison_table(rows))
    write_comparison_csv("comparison.csv", rows)
    results = comparison_summary(rows, sorters, "accuracy_pooled", "kilosort4")   # results.json entries
    print(comparison_text(results))        # the table, speed ratios, K to reach each sorter
    speed_ratios(rows)                     # sorter seconds / E-Sort seconds per second of data
    k_to_reach_level(rows, 0.81)           # K transfer and scratch need, and their ratio
    label_reach(rows, sorters, "accuracy_pooled")   # the same at each sorter's accuracy

Speed is compared per second of sorted data (a sorter may sort the whole recording while E-Sort
sorts the held-out half); E-Sort's time is its sort (inference + post-processing) time, the
median over its arms (they share the network shape, so they cost the same). Fine-tuning time is
reported beside it (`train_seconds`), not folded in.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from esort_jax.report import curves
from esort_jax.report.csv_writer import write_csv
from esort_jax.report.tables import ACCURACY_COLUMNS, Column, table_lines
from esort_jax.transfer import INITS

__all__ = [
    "METRIC_KEYS",
    "REACH_METRICS",
    "method_row",
    "comparison_table",
    "ordered_rows",
    "label_reach",
    "write_comparison_csv",
    "esort_seconds_per_data_second",
    "speed_ratios",
    "k_to_reach_level",
    "LABEL_AXES",
    "ROW_COLUMNS",
    "PAPER_REDUCTION",
    "comparison_summary",
    "comparison_header",
    "comparison_text",
]

# Scalar metrics every row carries (None when not applicable or not measured).
METRIC_KEYS = (
    "accuracy_pooled", "accuracy_mean", "accuracy_median", "precision_pooled", "recall_pooled",
    "well_detected", "n_units", "num_units_found", "sort_seconds", "sorted_duration_s",
    "train_seconds", "sorter_version",
    # SpikeForest's summary (esort_jax.report.snr) and the labels an E-Sort arm used (esort_jax.accounting)
    "accuracy_mean_snr_above", "well_detected_snr_above", "labels_used_spikes", "labelled_seconds", "train_steps",
)
# Metrics a "K needed to reach" level may be taken from.
REACH_METRICS = ("accuracy_pooled", "accuracy_mean", "accuracy_median")
# A row's columns (comparison.csv adds the sorters' speed ratio).
ROW_COLUMNS = ("method", "kind", "arm", "k", "status", *METRIC_KEYS)
PAPER_REDUCTION = 2.25  # the paper: transfer needs ~2.25x fewer labels to reach Kilosort4's accuracy


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


def _reach_text(reach: dict, largest: float | None, name: str = "K") -> str:
    if reach["status"] == "never":
        return f"> {largest:g} (never within the measured {name})" if largest else "never"
    if reach["status"] == "first":
        return f"<= {reach['k']:g} (already at the smallest {name})"
    return f"{reach['k']:.1f}"


# Axes a label reduction may be read on besides K: the labels an arm actually used (accounting).
LABEL_AXES = ("labels_used_spikes", "labelled_seconds")


def _rows_on_axis(rows: Sequence[dict], axis: str) -> list[dict] | str:
    """The E-Sort rows with `k` replaced by the mean of `axis` over the rows at that K (both arms
    at one K train on the same windows, so they share it), or the reason it cannot be read: the
    axis must be known, positive and increasing in K."""
    esort = [r for r in rows if r["kind"] == "esort" and _ok(r)]
    ks = sorted({r["k"] for r in esort})
    values = []
    for k in ks:
        cells = [r.get(axis) for r in esort if r["k"] == k]
        if any(c is None for c in cells):
            return f"{axis} is not recorded for K = {k}"
        values.append(float(np.mean(cells)))
    if not values or min(values) <= 0 or np.any(np.diff(values) <= 0):
        return f"{axis} is not positive and increasing in K ({values})"
    at = dict(zip(ks, values))
    return [{**r, "k": at[r["k"]]} for r in esort]


def k_to_reach_level(rows: Sequence[dict], level: float, metric: str = "accuracy_pooled", axis: str = "k") -> dict:
    """Labelled spikes per unit the E-Sort arms need to reach `level` of `metric`.

    Reads each arm's curve over K from the rows (linear in log K between measured K, first
    crossing; `esort_jax.report.curves.k_to_reach`) and the ratio K_scratch / K_transfer with its
    censoring (`esort_jax.report.curves.reduction_at`). Returns {level, metric, axis, transfer:
    {k, status}, scratch: {k, status}, ratio, bound, ratio_lower_bound (when scratch never gets
    there), text}. An arm without rows has k None and status 'missing'.

    `axis` one of LABEL_AXES reads the same curves against the labels each K actually used
    (interpolated in log of that axis); `k` in the arms' entries is then that axis's value, and
    when it cannot be read (not recorded, not increasing in K) the entry has `ratio` None and
    says why in `text`.
    """
    if metric not in REACH_METRICS:
        raise ValueError(f"metric must be one of {list(REACH_METRICS)}; got {metric!r}")
    if level is None or not math.isfinite(float(level)):
        raise ValueError(f"level must be a finite number; got {level!r}")
    if axis != "k" and axis not in LABEL_AXES:
        raise ValueError(f"axis must be 'k' or one of {list(LABEL_AXES)}; got {axis!r}")
    level = float(level)
    name = {"k": "K", "labels_used_spikes": "labelled spikes used"}.get(axis, axis.replace("_", " "))
    if axis != "k":
        rows = _rows_on_axis(rows, axis)
        if isinstance(rows, str):
            return {"level": level, "metric": metric, "axis": axis, "ratio": None, "bound": None,
                    "transfer": {"k": None, "status": "missing"}, "scratch": {"k": None, "status": "missing"},
                    "text": f"{metric} {level:.3f}: {rows}"}
    out: dict[str, Any] = {"level": level, "metric": metric, "axis": axis}
    curves_by_arm = {arm: _curve(rows, arm, metric) for arm in INITS}
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
    for arm in INITS:
        if out[arm]["status"] != "missing":
            parts.append(f"{arm} needs {name} {_reach_text(out[arm], largest, name)}")
    if out["ratio"] is not None:
        relation = {"exact": "=", "upper": "<=", "lower": ">="}[out["bound"]]
        parts.append(f"scratch / transfer {relation} {out['ratio']:.2f}x")
    elif out.get("ratio_lower_bound"):
        parts.append(f"scratch / transfer > {out['ratio_lower_bound']:.2f}x")
    out["text"] = " ".join(parts[:1]) + " " + "; ".join(parts[1:])
    return out


TABLE_COLUMNS = (
    *ACCURACY_COLUMNS,
    Column("precision_pooled", "prec", 6, ".3f"),
    Column("recall_pooled", "recall", 6, ".3f"),
    Column("well_detected", "well", 5, "d"),
    Column("num_units_found", "found", 5, "d"),
    Column("n_units", "units", 5, "d"),
    Column("sort_seconds", "sort_s", 9, ".2f"),
    Column("train_seconds", "train_s", 8, ".1f"),
)


def comparison_table(rows: Sequence[dict]) -> str:
    """The rows as a fixed-width text table; a failed method shows its status instead of numbers,
    and sorters get their speed ratio against E-Sort (`x_esort`)."""
    ratios = speed_ratios(rows)
    width = max([16] + [len(r["method"]) for r in rows])
    columns = [Column("method", "method", width, align="<"), *TABLE_COLUMNS, Column("x_esort", "x_esort", 8, ".1f")]
    lines: list[dict | str] = []
    for row in rows:
        if _ok(row):
            lines.append({**row, "x_esort": ratios.get(row["method"]) if row["kind"] == "sorter" else None})
        else:
            error = str(row.get("error", "")).splitlines()[0][:80] if row.get("error") else ""
            lines.append(f"{row['method']:<{width}} {row['status']}: {error}")
    return "\n".join(table_lines(columns, lines))


def ordered_rows(rows: Sequence[dict]) -> list[dict]:
    """Sorters first (in run order), then E-Sort by arm (transfer, scratch) and K."""
    sorters = [r for r in rows if r["kind"] == "sorter"]
    esort = sorted((r for r in rows if r["kind"] == "esort"), key=lambda r: (INITS.index(r["arm"]), r["k"]))
    return sorters + esort


def label_reach(rows: Sequence[dict], sorters: dict, metric: str, axis: str = "k") -> dict:
    """For each sorter that produced a score (`sorters`: name -> its metrics): the K (or `axis`)
    E-Sort's arms need to reach its `metric` (`k_to_reach_level`)."""
    out = {}
    for name, metrics in sorters.items():
        level = metrics.get(metric) if metrics.get("status") == "ok" else None
        if level is None or not math.isfinite(float(level)):
            continue
        out[name] = k_to_reach_level(rows, float(level), metric, axis=axis)
    return out


CSV_COLUMNS = (*ROW_COLUMNS, "speed_ratio_vs_esort")


def write_comparison_csv(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    """comparison.csv: one row per method, every scalar plus the sorters' speed ratio (atomic)."""
    ratios = speed_ratios(rows)
    write_csv(path, [{**row, "speed_ratio_vs_esort": ratios.get(row["method"]) if row["kind"] == "sorter" else None}
                     for row in rows], CSV_COLUMNS)


def comparison_summary(rows: Sequence[dict], sorters: dict, metric: str, reference_sorter: str | None) -> dict:
    """The results.json entries of a comparison: rows (`ordered_rows`), speed_ratio,
    esort_seconds_per_data_second, failed_sorters, k_to_reach (the K E-Sort needs to reach each
    sorter's `metric`; {} without E-Sort rows), reference_sorter and label_reduction_vs_reference
    (scratch / transfer K at the reference sorter's level, or None); labels_to_reach and
    label_reduction_vs_reference_by: the same read against each of LABEL_AXES (the labels the
    arms actually used). `sorters`: name -> metrics."""
    rows = ordered_rows(rows)
    esort = any(r["kind"] == "esort" for r in rows)
    reach = label_reach(rows, sorters, metric) if esort else {}
    reference = reach.get(reference_sorter) if reference_sorter else None
    by_axis = {axis: label_reach(rows, sorters, metric, axis=axis) if esort else {} for axis in LABEL_AXES}
    return {
        "rows": rows,
        "speed_ratio": speed_ratios(rows),
        "esort_seconds_per_data_second": esort_seconds_per_data_second(rows),
        "failed_sorters": [name for name, m in sorters.items() if m.get("status") != "ok"],
        "k_to_reach": reach,
        "reference_sorter": reference_sorter,
        "label_reduction_vs_reference": reference["ratio"] if reference else None,
        "labels_to_reach": by_axis,
        "label_reduction_vs_reference_by": {
            axis: (reach_on_axis.get(reference_sorter) or {}).get("ratio") if reference_sorter else None
            for axis, reach_on_axis in by_axis.items()},
    }


def comparison_header(results: Mapping, tolerance_ms: float) -> str:
    """The line above a comparison's table: the target, the spans sorted and scored."""
    target, spans = results["target"], results["spans"]
    return (f"Sorters and E-Sort on the target's held-out span: {target['num_units']} units, "
            f"{target['num_channels']} channels, sorters on span '{spans['span']}' "
            f"{spans['sorted_span']}, scored on {spans['scored_span']}, tolerance {tolerance_ms} ms")


def comparison_text(results: Mapping) -> str:
    """The table of a comparison (`comparison_summary`'s entries), then how many times slower each
    sorter is, the K E-Sort needs to reach each sorter and the label reduction at the reference."""
    lines = [comparison_table(results["rows"]), ""]
    for name, ratio in results["speed_ratio"].items():
        if ratio is not None:
            lines.append(f"{name} is {ratio:.1f}x slower than E-Sort's sorting per second of data")
    for name, entry in results["k_to_reach"].items():
        lines.append(f"K to reach {name}'s {entry['text']}")
    if results["label_reduction_vs_reference"] is not None:
        lines.append(f"label reduction at {results['reference_sorter']}'s accuracy: "
                     f"{results['label_reduction_vs_reference']:.2f}x (paper: ~{PAPER_REDUCTION}x)")
    reference = results.get("reference_sorter")
    for axis, reach in results.get("labels_to_reach", {}).items():
        if reference in reach and reach[reference]["transfer"]["status"] != "missing":  # the axis was read
            lines.append(f"against {axis} at {reference}'s {reach[reference]['text']}")
    return "\n".join(lines).rstrip()
