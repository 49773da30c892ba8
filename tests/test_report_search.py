"""esort_jax.report.search: a search's trials as a table, importances, figures, the best overrides."""

import numpy as np

from esort_jax.report import search


def _trials(n=12, seed=0):
    """lr decides the value; 'noise' is drawn at random; one failed and one running trial."""
    rng = np.random.default_rng(seed)
    trials = []
    for number in range(n):
        lr = [0.001, 0.01, 0.1][number % 3]
        trials.append({"number": number, "state": "COMPLETE", "value": {0.001: 0.5, 0.01: 0.9, 0.1: 0.7}[lr],
                       "params": {"lr": lr, "noise": float(rng.random())},
                       "overrides": [f"lr={lr}", "hparams_search=x", "k=5"]})
    trials.append({"number": n, "state": "FAIL", "value": None, "params": {"lr": 0.5}, "overrides": []})
    trials.append({"number": n + 1, "state": "RUNNING", "value": None, "params": {}, "overrides": []})
    return trials


def test_importance_finds_the_parameter_that_decides_the_value():
    importances = search.parameter_importances(_trials())
    assert list(importances) == ["lr", "noise"]
    assert importances["lr"] > 0.99 and importances["noise"] < 0.2
    assert search.parameter_importances(_trials(2)[:2]) == {}


def test_best_trial_table_and_rows():
    trials = _trials()
    best = search.best_trial(trials, "maximize")
    assert best["number"] == 1 and best["value"] == 0.9  # the lowest number among ties
    assert search.best_trial(trials, "minimize")["number"] == 0
    table = search.search_table(trials, "transfer.validation.accuracy_pooled", "maximize", top=3)
    lines = table.splitlines()
    assert "accuracy_pooled" in lines[0] and lines[2].split()[:2] == ["1", "0.9000"] and len(lines) == 6
    assert lines[-1] == "12 complete of 14 trials; 1 fail; 1 running"
    rows = search.search_rows(trials, "objective")
    assert rows[0] == {"trial": 0, "state": "COMPLETE", "objective": 0.5, "lr": 0.001, "noise": rows[0]["noise"]}


def test_best_overrides_drop_the_search_itself():
    text = search.best_overrides_text(["lr=0.01", "hparams_search=x", "k=5"], 1, 0.9, "s", "m", "experiments/t.py")
    assert text.splitlines()[2:] == ["lr=0.01", "k=5"]
    assert text.startswith("# Best trial 1 of study 's': m = 0.9") and "xargs python experiments/t.py" in text


def test_figures_are_written(tmp_path):
    trials = _trials()
    search.plot_optimization_history(trials, tmp_path / "history.png", metric="m")
    search.plot_param_importances(search.parameter_importances(trials), tmp_path / "importances.png")
    search.plot_param_importances({}, tmp_path / "empty.png")
    assert all((tmp_path / name).stat().st_size > 1000 for name in ("history.png", "importances.png", "empty.png"))
