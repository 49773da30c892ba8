"""Text tables: one writer (columns with formats -> aligned text) and the tables it prints.

    columns = [Column("arm", "arm", 9, align="<"), Column("accuracy_pooled", "acc_pool", 8, ".3f")]
    print("\\n".join(table_lines(columns, [{"arm": "transfer", "accuracy_pooled": 0.91}])))

    arm       acc_pool
    ------------------
    transfer     0.910

A cell is its value formatted with the column's format spec, padded to the column's width;
None and non-finite floats print as '-'. Cells are separated by one space and the header is
underlined by a rule as long as the header line.

The tables: the arms of experiments/transfer.py (`arms_table`, the demo's table), scores
against labels or ground truth (`scores_table`, experiments/sort_real.py), the label-efficiency
summary (`label_efficiency_table`), a pivot of a sweep (`format_pivot`) and the per-unit
evaluation (`evaluation_table`). `report.comparison.comparison_table` and
`report.summary.unit_table_text` use the same writer.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    from esort_jax.evaluate import EvaluationResult
    from esort_jax.report.results import Pivot

__all__ = [
    "Column",
    "MISSING",
    "table_lines",
    "ACCURACY_COLUMNS",
    "ARMS_COLUMNS",
    "arms_table",
    "scores_table",
    "label_efficiency_table",
    "format_pivot",
    "evaluation_table",
]

MISSING = "-"  # the text of a missing value (None, NaN, inf)


@dataclasses.dataclass(frozen=True)
class Column:
    """One column: the row key it shows, its header, its width, the format spec of a value
    (e.g. '.3f', 'd'; '' for text) and the alignment of header and cells ('>' right, '<' left)."""

    key: Any
    header: str
    width: int
    fmt: str = ""
    align: str = ">"

    def cell(self, value: Any) -> str:
        """`value` formatted and padded to the column's width ('-' when missing)."""
        text = MISSING if _missing(value) else format(value, self.fmt)
        return f"{text:{self.align}{self.width}}"


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return not math.isfinite(value)
    return False


def table_lines(columns: Sequence[Column], rows: Iterable[Mapping | str]) -> list[str]:
    """The header, a rule as long as it, and one line per row (a dict: a cell per column, a
    missing key is a missing value; a str: written as it is, e.g. a failed method's status)."""
    header = " ".join(f"{c.header:{c.align}{c.width}}" for c in columns)
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(row if isinstance(row, str) else " ".join(c.cell(row.get(c.key)) for c in columns))
    return lines


# ----------------------------------------------------------------------------------------------
# The experiments' tables


# Pooled, mean and median accuracy: the first numbers of every table that scores a sorting.
ACCURACY_COLUMNS = (
    Column("accuracy_pooled", "acc_pool", 8, ".3f"),
    Column("accuracy_mean", "acc_mean", 8, ".3f"),
    Column("accuracy_median", "acc_med", 8, ".3f"),
)
# The demo's table (experiments/transfer.py): one row per arm.
ARMS_COLUMNS = (
    Column("arm", "arm", 9, align="<"),
    *ACCURACY_COLUMNS,
    Column("precision_pooled", "prec", 8, ".3f"),
    Column("recall_pooled", "recall", 8, ".3f"),
    Column("well_detected", "well", 6, "d"),
    Column("n_units", "units", 6, "d"),
    Column("sort_seconds", "sort_s", 8, ".2f"),
)


def arms_table(results: Mapping, arms: Sequence[str]) -> str:
    """One line per arm of a transfer run's results (`results[arm]` holds the arm's metrics)."""
    return "\n".join(table_lines(ARMS_COLUMNS, [results[arm] for arm in arms]))


SCORES_COLUMNS = (
    Column("name", "", 24, align="<"),
    *ACCURACY_COLUMNS,
    Column("precision_pooled", "prec", 8, ".3f"),
    Column("recall_pooled", "recall", 8, ".3f"),
    Column("well_detected", "well", 5, "d"),
    Column("n_units", "units", 6, "d"),
)


def scores_table(named_scores: Iterable[tuple[str, Mapping]]) -> str:
    """One line per (name, `EvaluationResult.to_dict()`-style scores), e.g. E-Sort's agreement
    with its labels and its scores against ground truth (experiments/sort_real.py)."""
    return "\n".join(table_lines(SCORES_COLUMNS, [{**scores, "name": name} for name, scores in named_scores]))


def _mean_std(mean: float | None, std: float | None, sign: str = "") -> str | None:
    return None if mean is None else f"{mean:>{sign}8.3f} ± {std:<6.3f}"


def label_efficiency_table(results: Mapping, metric: str) -> str:
    """Per K, mean ± std over seeds of `metric` for each arm and the paired gain, then the
    label reduction (from the `summary`, `gain` and `label_reduction` of a label-efficiency run)."""
    summary = results["summary"]
    arms = [a for a in ("transfer", "scratch") if any(r["arm"] == a for r in summary)]
    gains = {g["k"]: g for g in results.get("gain", {}).get(metric, [])}
    columns = [Column("k", "K", 4)] + [Column(arm, arm, 17) for arm in arms]
    columns += [Column("gain", "gain", 17)] if gains else []
    rows = []
    for k in sorted({r["k"] for r in summary}):
        row: dict[str, Any] = {"k": k}
        for arm in arms:
            entry = next((r for r in summary if r["k"] == k and r["arm"] == arm), {})
            row[arm] = _mean_std(entry.get(f"{metric}_mean"), entry.get(f"{metric}_std"))
        gain = gains.get(k)
        row["gain"] = _mean_std(gain["mean"], gain["std"], "+") if gain else None
        rows.append(row)
    lines = [f"{metric}: mean ± std over seeds", *table_lines(columns, rows)]
    reduction = results.get("label_reduction")
    if reduction:
        lines.append(f"label reduction ({reduction['metric']}): {reduction['headline']['text']}")
        ref = reduction.get("reference")
        if ref:
            lines.append(f"  at the reference accuracy {ref['level']:.3f}: {_reduction_text(ref)}")
    return "\n".join(lines)


def _reduction_text(entry: Mapping) -> str:
    if entry["transfer_status"] == "never":
        return "transfer never reaches it"
    if entry["scratch_status"] == "never":
        bound = entry.get("ratio_lower_bound")
        return "scratch never reaches it" + (f" (> {bound:.1f}x)" if bound else "")
    if entry["ratio"] is None:
        return "both reach it at the smallest K (undetermined)"
    prefix = {"exact": "", "upper": "<= ", "lower": ">= "}[entry["bound"]]
    return (f"{prefix}{entry['ratio']:.2f}x (K_scratch {entry['k_scratch']:.1f} / "
            f"K_transfer {entry['k_transfer']:.1f})")


def format_pivot(table: Pivot, precision: int = 3) -> str:
    """The grid as text (rows down, cols across); '-' for empty cells, 'n=' when a cell averages
    several jobs."""
    multi = any(c > 1 for row in table.counts for c in row)
    col_names = [str(c) for c in table.col_values]
    cell_w = max([precision + 4] + [len(c) for c in col_names]) + (5 if multi else 0)
    corner = f"{table.row_key} \\ {table.col_key}" if table.col_key else table.row_key
    head_w = max([len(table.row_key), len(corner)] + [len(str(r)) for r in table.row_values])
    columns = [Column("name", corner, head_w, align="<")]
    columns += [Column(j, name, cell_w) for j, name in enumerate(col_names)]
    rows = []
    for name, values, counts in zip(table.row_values, table.values, table.counts):
        row: dict[Any, Any] = {"name": str(name)}
        for j, (v, n) in enumerate(zip(values, counts)):
            if not math.isnan(v):
                row[j] = f"{v:.{precision}f}" + (f" n={n}" if multi else "")
        rows.append(row)
    title = f"{table.metric}" + (" (mean over jobs per cell)" if multi else "")
    return "\n".join([title, *table_lines(columns, rows)])


EVALUATION_COLUMNS = (
    Column("unit", "unit", 10),
    Column("pred", "pred", 10),
    Column("num_gt", "num_gt", 7, "d"),
    Column("num_pred", "num_pred", 8, "d"),
    Column("tp", "tp", 7, "d"),
    Column("fp", "fp", 7, "d"),
    Column("fn", "fn", 7, "d"),
    Column("accuracy", "acc", 6, ".3f"),
    Column("precision", "prec", 6, ".3f"),
    Column("recall", "rec", 6, ".3f"),
)


def evaluation_table(result: EvaluationResult) -> str:
    """A per-unit table of an evaluation followed by its pooled and per-unit summary lines."""
    r = result
    rows = []
    for k in range(r.n_units):
        rows.append({
            "unit": str(r.unit_ids[k]), "pred": None if r.pred_index[k] < 0 else str(r.pred_unit_ids[r.pred_index[k]]),
            "num_gt": r.num_gt[k], "num_pred": r.num_pred[k], "tp": r.tp[k], "fp": r.fp[k], "fn": r.fn[k],
            "accuracy": r.accuracy[k], "precision": r.precision[k], "recall": r.recall[k],
        })
    lines = table_lines(EVALUATION_COLUMNS, rows)
    unpaired = (f", incl. {r.unmatched_pred_spikes} FP from {r.unmatched_pred_units} unpaired predicted units)"
                if r.unmatched_pred_as_fp and r.unmatched_pred_units else ")")
    lines += [
        lines[1],
        f"pooled: accuracy {r.accuracy_pooled:.4f}  precision {r.precision_pooled:.4f}  "
        f"recall {r.recall_pooled:.4f}  (TP {r.tp_total}, FP {r.fp_total}, FN {r.fn_total}" + unpaired,
        f"per unit: accuracy mean {r.accuracy_mean:.4f} median {r.accuracy_median:.4f}  "
        f"precision mean {r.precision_mean:.4f}  recall mean {r.recall_mean:.4f}  "
        f"well detected (acc >= {r.well_detected_score}) {r.well_detected}/{int(r.evaluated.sum())}",
        f"tolerance {r.tolerance_ms:.4g} ms = {r.tolerance_samples} samples; identities {r.identities}"
        + (f"; span [{r.span[0]}, {r.span[1]})" if r.span is not None else ""),
    ]
    return "\n".join(lines)
