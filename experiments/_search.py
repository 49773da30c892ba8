"""A hyperparameter search's folder summarised (experiments/summarize.py): its trials read from
the Optuna storage that search.json names, then a table, a CSV, the optimisation history and
parameter importance figures (esort_jax.report.search) and best_overrides.txt.

    text = summarize_search(Path("multirun/search/finetune_k5_seed0"))
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from esort_jax.report import search as report
from esort_jax.report.csv_writer import write_csv

__all__ = ["SEARCH_RECORD", "is_search", "load_trials", "summarize_search"]

SEARCH_RECORD = "search.json"  # written by hydra/sweeper=optuna_resumable into the sweep folder


def is_search(folder: Path) -> bool:
    """True for the sweep folder of an Optuna search (it holds search.json)."""
    return (folder / SEARCH_RECORD).is_file()


def load_trials(folder: Path) -> tuple[dict, list[dict]]:
    """(search.json, every trial of the study as a report.search trial dict). The storage is the
    one recorded, or the folder's own optuna.db when the folder was moved."""
    os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")  # optuna 2.10 on SQLAlchemy 1.4 (pinned)
    import optuna

    record = json.loads((folder / SEARCH_RECORD).read_text())
    storage = record["storage"]
    local = folder / "optuna.db"
    if str(storage).startswith("sqlite:///") and not Path(str(storage)[len("sqlite:///"):]).exists() and local.exists():
        storage = f"sqlite:///{local.resolve()}"
    study = optuna.load_study(study_name=record["study_name"], storage=storage)
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "params": dict(t.params),
               "overrides": list(t.user_attrs.get("hydra_overrides", [])),
               "seconds": t.duration.total_seconds() if t.duration else None}
              for t in study.get_trials(deepcopy=False)]
    return record, trials


def summarize_search(folder: Path) -> str:
    """Write search_trials.csv, optimization_history.png, param_importances.png and
    best_overrides.txt into `folder`; return the table and what was written, as text."""
    record, trials = load_trials(folder)
    metric = record.get("optimized_metric") or "objective"
    direction = (record.get("directions") or ["maximize"])[0]
    write_csv(folder / "search_trials.csv", report.search_rows(trials, metric))
    report.plot_optimization_history(trials, folder / "optimization_history.png", metric=metric,
                                     direction=direction)
    importances = report.parameter_importances(trials)
    report.plot_param_importances(importances, folder / "param_importances.png")
    lines = [f"study {record['study_name']!r} ({direction} {metric}):", report.search_table(trials, metric, direction)]
    if importances:
        lines.append("importances: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()))
    best = report.best_trial(trials, direction)
    if best is not None:
        (folder / "best_overrides.txt").write_text(report.best_overrides_text(
            best["overrides"], best["number"], best["value"], record["study_name"], metric,
            record.get("entry_point", "experiments/transfer.py")))
        lines.append(f"best trial {best['number']}: {metric} = {best['value']:.4f} -> {folder / 'best_overrides.txt'}")
    lines.append(f"-> {folder / 'search_trials.csv'}, {folder / 'optimization_history.png'}, "
                 f"{folder / 'param_importances.png'}")
    return "\n".join(lines)
