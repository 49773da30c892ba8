"""Gather every results.json under a sweep folder into one table; pivot one metric into a grid.

    python experiments/summarize.py multirun/transfer/2026-01-01_12-00-00
    python experiments/summarize.py multirun/transfer/<date_time> \
        --rows source.data.drift.mode --cols target.data.drift.mode --metric transfer.accuracy_pooled

Writes `<folder>/summary.csv` (one row per job, nested keys flattened with dots: `transfer.accuracy_pooled`,
`config.target.data.drift.mode`, ...). With --rows (and optionally --cols) it prints the pivot table
of --metric (mean over the jobs in a cell, e.g. several seeds) and writes a heatmap PNG with the
values annotated, `<folder>/summary_<metric>.png`.

A row or column key may be any flattened key; a key not found as given is looked up under
`config.` (so swept config keys work as typed on the command line). Plain argparse, no Hydra:
the functions are reused by notebooks/drift_ablation.ipynb.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = [
    "find_results",
    "flatten",
    "load_rows",
    "lookup",
    "columns_of",
    "write_csv",
    "Pivot",
    "pivot",
    "format_pivot",
    "plot_heatmap",
    "main",
]

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
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    lead = [k for k in ("job", "status", "experiment", "overrides") if k in seen]
    rest = [k for k in seen if k not in lead]
    return lead + [k for k in rest if not k.startswith("config.")] + [k for k in rest if k.startswith("config.")]


def write_csv(path: str | Path, rows: Sequence[dict]) -> list[str]:
    columns = columns_of(rows)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    return columns


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


class Pivot:
    """A grid of one metric: rows x cols, the mean over the jobs in each cell (NaN when none)."""

    def __init__(self, row_key, col_key, metric, row_values, col_values, values, counts):
        self.row_key, self.col_key, self.metric = row_key, col_key, metric
        self.row_values, self.col_values = row_values, col_values
        self.values = values  # [R][C] floats
        self.counts = counts  # [R][C] ints: jobs with a finite metric in the cell

    def to_dict(self) -> dict:
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


def format_pivot(table: Pivot, precision: int = 3) -> str:
    """The grid as text (rows down, cols across); '-' for empty cells, 'n=' when a cell averages
    several jobs."""
    col_names = [str(c) for c in table.col_values]
    row_names = [str(r) for r in table.row_values]
    multi = any(c > 1 for row in table.counts for c in row)
    cell_w = max([precision + 4] + [len(c) for c in col_names]) + (5 if multi else 0)
    head_w = max([len(table.row_key)] + [len(r) for r in row_names])
    corner = f"{table.row_key} \\ {table.col_key}" if table.col_key else table.row_key
    head_w = max(head_w, len(corner))
    lines = [f"{table.metric}" + (" (mean over jobs per cell)" if multi else ""),
             f"{corner:<{head_w}} " + " ".join(f"{c:>{cell_w}}" for c in col_names)]
    lines.append("-" * len(lines[-1]))
    for name, values, counts in zip(row_names, table.values, table.counts):
        cells = []
        for v, n in zip(values, counts):
            text = "-" if math.isnan(v) else f"{v:.{precision}f}"
            if multi and not math.isnan(v):
                text += f" n={n}"
            cells.append(f"{text:>{cell_w}}")
        lines.append(f"{name:<{head_w}} " + " ".join(cells))
    return "\n".join(lines)


def plot_heatmap(
    table: Pivot,
    path: str | Path | None = None,
    title: str | None = None,
    cmap: str = "viridis",
    center: float | None = None,
):
    """Heatmap of the grid with each value written in its cell; returns the figure.

    `center`: a value at the middle of the colour scale (e.g. 0 for a gain, with cmap="RdBu")."""
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.asarray(table.values, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * max(len(table.col_values), 1), 1.2 + 0.8 * max(len(table.row_values), 1)))
    finite = data[np.isfinite(data)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if center is not None:
        reach = max(abs(vmax - center), abs(vmin - center)) or 0.5
        vmin, vmax = center - reach, center + reach
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    fig.colorbar(image, ax=ax, label=table.metric)
    ax.set_xticks(range(len(table.col_values)))
    ax.set_xticklabels([str(c) for c in table.col_values])
    ax.set_yticks(range(len(table.row_values)))
    ax.set_yticklabels([str(r) for r in table.row_values])
    ax.set_xlabel(table.col_key or "")
    ax.set_ylabel(table.row_key)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            v = data[i, j]
            if not np.isfinite(v):
                ax.text(j, i, "–", ha="center", va="center", color="gray", fontsize=9)
                continue
            r, g, b, _ = image.cmap(image.norm(v))
            color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"  # readable on the cell
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", color=color, fontsize=9)
    ax.set_title(title or table.metric, fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a multirun (sweep) folder, or any folder holding results.json files")
    parser.add_argument("--rows", help="flattened key for the pivot's rows (e.g. source.data.drift.mode)")
    parser.add_argument("--cols", help="flattened key for the pivot's columns (e.g. target.data.drift.mode)")
    parser.add_argument("--metric", default="transfer.accuracy_pooled", help="flattened key of the value to show")
    parser.add_argument("--csv", type=Path, help="where to write the table (default <folder>/summary.csv)")
    parser.add_argument("--png", type=Path, help="where to write the heatmap (default <folder>/summary_<metric>.png)")
    args = parser.parse_args(argv)

    if not args.folder.exists():
        parser.error(f"{args.folder} does not exist")
    rows = load_rows(args.folder)
    if not rows:
        print(f"no results.json under {args.folder}", file=sys.stderr)
        return 1
    out_dir = args.folder if args.folder.is_dir() else args.folder.parent
    csv_path = args.csv or out_dir / "summary.csv"
    columns = write_csv(csv_path, rows)
    failed = [r["job"] for r in rows if r.get("status") != "ok"]
    print(f"{len(rows)} results ({len(failed)} not ok{': ' + ', '.join(failed) if failed else ''}); "
          f"{len(columns)} columns -> {csv_path}")
    if args.cols and not args.rows:
        parser.error("--cols needs --rows")
    if args.rows:
        for key in [args.rows, args.cols, args.metric]:
            if key and all(lookup(r, key) is None for r in rows):
                near = [c for c in columns if key.split(".")[-1] in c][:8]
                parser.error(f"no result has {key!r}" + (f"; similar keys: {', '.join(near)}" if near else ""))
        table = pivot(rows, args.rows, args.cols, args.metric)
        print()
        print(format_pivot(table))
        import matplotlib

        matplotlib.use("Agg")
        png = args.png or out_dir / f"summary_{_safe_name(args.metric)}.png"
        fig = plot_heatmap(table, png, title=f"{args.metric} ({args.folder.name})")
        import matplotlib.pyplot as plt

        plt.close(fig)
        print(f"heatmap -> {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
