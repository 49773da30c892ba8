"""What the entry points log and print beside results.json; the text itself comes from
esort_jax.report (tables, comparison, curves), which reads the same results."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

__all__ = ["log_figures", "log_scalars", "log_table", "show"]


def log_table(run, name: str, columns: Sequence[str], rows: Iterable[Mapping]) -> None:
    """One logger table: a row per mapping, a cell per column (missing: None)."""
    run.logger.table(name, list(columns), [[row.get(c) for c in columns] for row in rows])


def log_scalars(run, groups: Mapping[str, Mapping]) -> None:
    """The numbers of each group logged as `<prefix>/<key>` (other values skipped)."""
    run.logger.log({f"{prefix}/{k}": v for prefix, values in groups.items()
                    for k, v in values.items() if isinstance(v, (int, float))})


def log_figures(run, figures: Mapping[str, str]) -> None:
    """Each saved figure (name -> PNG path) as a logger image."""
    for name, path in figures.items():
        run.logger.image(name, path)


def show(run, header: str, table: str, footer: str | None = None) -> None:
    """`table` into results.json (`table`), printed after a blank line under `header`, with an
    optional footer."""
    run.results["table"] = table
    print()
    print(header)
    print(table)
    if footer is not None:
        print(footer)
