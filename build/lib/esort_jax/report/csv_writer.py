"""CSV files: one writer for every table the experiments write (label_efficiency.csv,
comparison.csv, summary.csv).

    write_csv("label_efficiency.csv", rows, csv_columns(rows, leading=("seed", "k", "arm")))

Rows are dicts; a header of column names, one line per row, None as an empty cell, keys not
among the columns left out. The file appears complete or not at all (written next to its
destination, then renamed: `esort_jax.io.atomic`), so a run killed while writing keeps the
previous version. Lines end in '\\n'.
"""

from __future__ import annotations

import csv
import os
from typing import Iterable, Mapping, Sequence

from esort_jax.io.atomic import atomic_file

__all__ = ["csv_columns", "write_csv"]


def csv_columns(rows: Iterable[Mapping], leading: Sequence[str] = ()) -> list[str]:
    """`leading`, then every other key of the rows in first-seen order."""
    columns = dict.fromkeys(leading)
    for row in rows:
        for key in row:
            columns.setdefault(key, None)
    return list(columns)


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> list[str]:
    """Write `rows` to `path` atomically under the header `columns` (default: `csv_columns(rows)`);
    returns the columns."""
    columns = csv_columns(rows) if columns is None else list(columns)
    with atomic_file(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row[c] for c in columns})
    return columns
