"""A hyperparameter search read back: its trials as rows, a table, parameter importances, the
optimisation history and importance figures, and the best trial's overrides as a file to run.

    trials = [{"number": 0, "state": "COMPLETE", "value": 0.91, "params": {...}, "overrides": [...]}, ...]
    print(search_table(trials, "transfer.validation.accuracy_pooled", "maximize"))
    parameter_importances(trials)        # {"finetune.train.learning_rate": 0.41, ...}
    plot_optimization_history(trials, "history.png", direction="maximize")

A trial is a plain dict (experiments/summarize.py reads them from the Optuna storage): its
`number`, `state` (COMPLETE, FAIL, RUNNING...), `value` (None unless complete), `params` (the
searched values) and `overrides` (everything its job ran with).

Importance here is each parameter's epsilon-squared over the completed trials: the share of the
objective's variance explained by grouping the trials by that parameter alone (numbers with more
than four values in up to four rank bins), minus what chance grouping explains, clipped at 0. It
needs no model (Optuna's default fANOVA needs scikit-learn) and reads as "how much of the spread
of the objective goes with this setting"; with few trials it is rough, and interactions are not
separated.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from esort_jax.report.plots import _figure, _finish
from esort_jax.report.tables import Column, table_lines

__all__ = ["completed", "best_trial", "search_rows", "search_table", "parameter_importances",
           "plot_optimization_history", "plot_param_importances", "best_overrides_text"]

MAX_BINS = 4  # rank bins for a numeric parameter with more values than this


def completed(trials: Sequence[dict]) -> list[dict]:
    """The trials that finished with a finite objective value."""
    return [t for t in trials if t.get("state") == "COMPLETE" and _finite(t.get("value"))]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def best_trial(trials: Sequence[dict], direction: str = "maximize") -> dict | None:
    """The completed trial with the best value (the lowest number on ties); None if none."""
    done = completed(trials)
    if not done:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(done, key=lambda t: (sign * t["value"], t["number"]))


def search_rows(trials: Sequence[dict], metric: str = "value") -> list[dict]:
    """One flat row per trial: number, state, the objective under `metric`, each parameter."""
    return [{"trial": t["number"], "state": t.get("state"), metric: t.get("value"), **t.get("params", {})}
            for t in trials]


def search_table(trials: Sequence[dict], metric: str, direction: str = "maximize", top: int | None = 10) -> str:
    """The completed trials best first (the `top` best; None: all), then a line counting the
    others by state."""
    done = sorted(completed(trials), key=lambda t: (-t["value"] if direction == "maximize" else t["value"],
                                                    t["number"]))
    names = sorted({name for t in trials for name in t.get("params", {})})
    columns = [Column("trial", "trial", 5, "d"), Column("value", metric.split(".")[-1][:16], 16, ".4f")]
    columns += [Column(name, _short(name), max(10, len(_short(name))), "") for name in names]
    rows = [{"trial": t["number"], "value": t["value"], **{n: _text(t["params"].get(n)) for n in names}}
            for t in (done if top is None else done[:top])]
    lines = table_lines(columns, rows)
    states: dict[str, int] = {}
    for t in trials:
        states[t.get("state")] = states.get(t.get("state"), 0) + 1
    lines.append(f"{len(done)} complete of {len(trials)} trials"
                 + "".join(f"; {n} {s.lower()}" for s, n in sorted(states.items()) if s != "COMPLETE"))
    return "\n".join(lines)


def _short(name: str) -> str:
    """A parameter's last two dotted parts (finetune.train.learning_rate -> train.learning_rate)."""
    return ".".join(str(name).split(".")[-2:])


def _text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def parameter_importances(trials: Sequence[dict]) -> dict[str, float]:
    """Epsilon-squared of the objective per searched parameter over the completed trials (module
    docstring), largest first; {} with fewer than 3 completed trials."""
    done = completed(trials)
    if len(done) < 3:
        return {}
    values = np.array([t["value"] for t in done], dtype=np.float64)
    names = sorted({name for t in done for name in t.get("params", {})})
    out = {name: _epsilon_squared(values, _groups([t["params"].get(name) for t in done])) for name in names}
    return dict(sorted(out.items(), key=lambda item: -item[1]))


def _groups(settings: list) -> np.ndarray:
    """A group index per trial: its value's, or for numbers with many values its rank bin's."""
    numeric = all(_finite(v) for v in settings)
    distinct = sorted(set(settings), key=lambda v: (str(type(v)), v if numeric else str(v)))
    if not numeric or len(distinct) <= MAX_BINS:
        return np.array([distinct.index(v) for v in settings])
    ranks = np.argsort(np.argsort(np.asarray(settings, dtype=np.float64), kind="stable"), kind="stable")
    return ranks * MAX_BINS // len(settings)


def _epsilon_squared(values: np.ndarray, groups: np.ndarray) -> float:
    """(SS_between - (k - 1) MS_within) / SS_total, clipped to [0, 1]; 0 when nothing varies."""
    total = float(np.sum((values - values.mean()) ** 2))
    labels = np.unique(groups)
    if total == 0.0 or len(labels) < 2 or len(labels) >= len(values):
        return 0.0
    between = sum(float(np.sum(groups == g)) * (values[groups == g].mean() - values.mean()) ** 2 for g in labels)
    within = (total - between) / (len(values) - len(labels))
    return float(min(1.0, max(0.0, (between - (len(labels) - 1) * within) / total)))


def plot_optimization_history(trials: Sequence[dict], path: str | Path | None = None, *, metric: str = "objective",
                              direction: str = "maximize"):
    """Each completed trial's value by trial number, and the best so far as a step line."""
    done = sorted(completed(trials), key=lambda t: t["number"])
    fig = _figure(path, (6.0, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    numbers = [t["number"] for t in done]
    values = np.array([t["value"] for t in done], dtype=np.float64)
    best = np.maximum.accumulate(values) if direction == "maximize" else np.minimum.accumulate(values)
    ax.plot(numbers, values, "o", color="tab:blue", label="trial")
    ax.step(numbers, best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"optimisation history ({len(done)} complete trials)")
    ax.grid(alpha=0.3)
    if done:
        ax.legend(loc="lower right" if direction == "maximize" else "upper right")
    return _finish(fig, path)


def plot_param_importances(importances: dict[str, float], path: str | Path | None = None):
    """Horizontal bars: each parameter's importance (`parameter_importances`), largest on top."""
    names = list(importances)[::-1]
    fig = _figure(path, (6.0, 0.6 + 0.4 * max(1, len(names))))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(range(len(names)), [importances[n] for n in names], color="tab:blue")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the objective's variance (epsilon-squared)")
    ax.set_title("parameter importances" if names else "parameter importances (fewer than 3 complete trials)")
    return _finish(fig, path)


def best_overrides_text(overrides: Sequence[str], number: int, value: float, study: str, metric: str | None,
                        entry_point: str) -> str:
    """The best trial's overrides, one a line, without the search itself (`hparams_search=`),
    under comments saying which trial it is and how to run it."""
    kept = [o for o in overrides if not o.lstrip("+~").startswith("hparams_search=")]
    header = [f"# Best trial {number} of study {study!r}: {metric or 'objective'} = {value:.6g}",
              f"# Run it:  grep -v '^#' best_overrides.txt | xargs python {entry_point}"]
    return "\n".join(header + kept) + "\n"
