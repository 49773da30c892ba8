"""Gather every results.json under a sweep folder into one table; pivot one metric into a grid.

    python experiments/summarize.py multirun/transfer/2026-01-01_12-00-00
    python experiments/summarize.py multirun/transfer/<date_time> \
        --rows source.data.drift.mode --cols target.data.drift.mode --metric transfer.accuracy_pooled

Writes `<folder>/summary.csv` (one row per job, nested keys flattened with dots: `transfer.accuracy_pooled`,
`config.target.data.drift.mode`, ...). With --rows (and optionally --cols) it prints the pivot table
of --metric (mean over the jobs in a cell, e.g. several seeds) and writes a heatmap PNG with the
values annotated, `<folder>/summary_<metric>.png`.

The folder of an Optuna search (hparams_search=..., it holds search.json) is summarised as a
search too (experiments/_search.py): its trials best first, search_trials.csv, the optimisation
history and parameter importance figures, and best_overrides.txt (the best trial, ready to run):
    python experiments/summarize.py multirun/search/finetune_k5_seed0

A row or column key may be any flattened key; a key not found as given is looked up under
`config.` (so swept config keys work as typed on the command line). Plain argparse, no Hydra.
Reading, pivot, table and heatmap are esort_jax.report's (results, tables, plots), which
notebooks/drift_ablation.ipynb uses too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from esort_jax.report.csv_writer import write_csv
from esort_jax.report.plots import plot_heatmap
from esort_jax.report.results import columns_of, load_rows, lookup, pivot
from esort_jax.report.tables import format_pivot
from experiments._search import is_search, summarize_search


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
    columns = write_csv(csv_path, rows, columns_of(rows))
    failed = [r["job"] for r in rows if r.get("status") != "ok"]
    print(f"{len(rows)} results ({len(failed)} not ok{': ' + ', '.join(failed) if failed else ''}); "
          f"{len(columns)} columns -> {csv_path}")
    if is_search(out_dir):
        print()
        print(summarize_search(out_dir))
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
        png = args.png or out_dir / f"summary_{_safe_name(args.metric)}.png"
        plot_heatmap(table, png, title=f"{args.metric} ({args.folder.name})")
        print(f"heatmap -> {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
