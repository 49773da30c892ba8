"""Reading results back: every results.json under a run or sweep folder as one flat row, and
pivots of one metric over two keys.

    rows = load_rows("multirun/transfer/<date_time>")   # one flat dict per job
    lookup(rows[0], "source.data.drift.mode")           # a result key, else the config's
    grid = pivot(rows, "source.data.drift.mode", "target.data.drift.mode", "transfer.accuracy_pooled")

Nested keys are flattened with dots (`transfer.accuracy_pooled`, `config.target.data.drift.mode`).
Printed with `report.tables.format_pivot`, drawn with `report.plots.plot_heatmap`, written
with `report.csv_writer.write_csv(path, rows, columns_of(rows))` (experiments/summarize.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from esort_jax.report.csv_writer import csv_columns

__all__ = ["find_results", "flatten", "load_rows", "lookup", "columns_of", "Pivot", "pivot"]

MAX_LIST = 16  # lists of scalars up to this length are kept (as JSON text); longer ones dropped


def find_results(root: str | Path) -> list[Path]:
    """Every results.json under root, in job order (numeric sub-folder names sorted as numbers)."""
    root = Path(root)
    if root.is_file():
        return [root]

    def order(path: Path):
        parts = path.relative_to(root).parts[:-1]
        return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)

    return sorted(root.rglob("results.json"), key=order)


def flatten(data: Any, prefix: str = "", max_list: int = MAX_LIST) -> dict[str, Any]:
    """Nested dicts → {'a.b.c': value}. Lists of scalars (≤ max_list) become JSON text; longer
    lists and lists holding dicts (e.g. raw rows) are dropped."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}.", max_list))
        return out
    key = prefix[:-1]
    if isinstance(data, list):
        if len(data) <= max_list and all(not isinstance(v, (dict, list)) for v in data):
            out[key] = json.dumps(data)
        return out
    out[key] = data
    return out


def _overrides(job_dir: Path) -> list[str]:
    """Hydra's command-line overrides of a job (its .hydra/overrides.yaml), if present."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    import yaml

    values = yaml.safe_load(path.read_text()) or []
    return [str(v) for v in values]


def load_rows(root: str | Path) -> list[dict]:
    """One flat dict per results.json: `job` (folder relative to root), `overrides`, and the
    flattened results (including `config.*`, `status`, `seconds.*`)."""
    root = Path(root)
    rows = []
    for path in find_results(root):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            rows.append({"job": _job(root, path), "status": f"unreadable: {error}"})
            continue
        row = {"job": _job(root, path), "overrides": " ".join(_overrides(path.parent))}
        row.update(flatten(data))
        rows.append(row)
    return rows


def _job(root: Path, path: Path) -> str:
    rel = path.parent.relative_to(root) if root.is_dir() else Path(path.parent.name)
    return str(rel) if str(rel) != "." else path.parent.name


def lookup(row: dict, key: str) -> Any:
    """row[key], else row['config.' + key], else None."""
    if key in row:
        return row[key]
    return row.get(f"config.{key}")


def columns_of(rows: Sequence[dict]) -> list[str]:
    """Column order: job, status, overrides, results keys (first-seen order), config.* last."""
    seen = csv_columns(rows)
    lead = [k for k in ("job", "status", "experiment", "overrides") if k in seen]
    rest = [k for k in seen if k not in lead]
    return lead + [k for k in rest if not k.startswith("config.")] + [k for k in rest if k.startswith("config.")]


def _number(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _axis(values: Iterable[Any]) -> list[Any]:
    """Distinct values: numeric sort when all are numbers, else first-seen (job) order."""
    distinct: list[Any] = []
    for v in values:
        if v not in distinct:
            distinct.append(v)
    if distinct and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in distinct):
        return sorted(distinct)
    return distinct


@dataclasses.dataclass(frozen=True)
class Pivot:
    """A grid of one metric: rows x cols, the mean over the jobs in each cell (NaN when none)."""

    row_key: str
    col_key: str | None
    metric: str
    row_values: list
    col_values: list
    values: list[list[float]]  # [R][C]
    counts: list[list[int]]  # [R][C]: jobs with a finite metric in the cell

    def to_dict(self) -> dict:
        """JSON-friendly: the keys, axis values, values (None for empty cells) and counts."""
        return {
            "rows": self.row_key, "cols": self.col_key, "metric": self.metric,
            "row_values": self.row_values, "col_values": self.col_values,
            "values": [[None if math.isnan(v) else v for v in r] for r in self.values],
            "counts": self.counts,
        }


def pivot(rows: Sequence[dict], row_key: str, col_key: str | None, metric: str) -> Pivot:
    """Mean of `metric` per (row value, col value); col_key None gives a single column."""
    cells: dict[tuple, list[float]] = {}
    row_values = _axis(lookup(r, row_key) for r in rows)
    col_values = _axis(lookup(r, col_key) for r in rows) if col_key else [metric]
    for r in rows:
        key = (lookup(r, row_key), lookup(r, col_key) if col_key else metric)
        value = _number(lookup(r, metric))
        cells.setdefault(key, [])
        if not math.isnan(value):
            cells[key].append(value)
    values, counts = [], []
    for rv in row_values:
        values.append([])
        counts.append([])
        for cv in col_values:
            got = cells.get((rv, cv), [])
            values[-1].append(sum(got) / len(got) if got else math.nan)
            counts[-1].append(len(got))
    return Pivot(row_key, col_key, metric, row_values, col_values, values, counts)
