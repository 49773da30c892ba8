"""experiments/summarize.py on fabricated sweep folders (no training)."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.summarize import flatten, format_pivot, load_rows, lookup, main, pivot

REPO = Path(__file__).resolve().parent.parent
MODES = ["none", "slow", "fast"]


def fake_sweep(root: Path, seeds=(0,), fail=None) -> dict:
    """A Hydra-like multirun folder: jobs 0..N with results.json and .hydra/overrides.yaml.
    transfer.accuracy_pooled = 0.9 - 0.1 * source index - 0.2 * target index + 0.01 * seed."""
    expected = {}
    job = 0
    for si, source in enumerate(MODES):
        for ti, target in enumerate(MODES):
            for seed in seeds:
                folder = root / str(job)
                (folder / ".hydra").mkdir(parents=True)
                overrides = [f"source.data.drift.mode={source}", f"target.data.drift.mode={target}", f"seed={seed}"]
                (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
                accuracy = 0.9 - 0.1 * si - 0.2 * ti + 0.01 * seed
                status = "failed" if fail == (source, target) else "ok"
                results = {
                    "experiment": "transfer", "status": status, "k": 10,
                    "transfer": {"accuracy_pooled": accuracy, "per_unit": {"accuracy": [0.5] * 40}},
                    "scratch": {"accuracy_pooled": accuracy - 0.15},
                    "seconds": {"total": 1.0},
                    "config": {"seed": seed, "k": 10, "thresholds": [0.5, 1.0],
                               "source": {"data": {"drift": {"mode": source}}},
                               "target": {"data": {"drift": {"mode": target}}}},
                }
                if status == "failed":
                    results = {k: v for k, v in results.items() if k not in ("transfer", "scratch")}
                    results["error"] = "ValueError: boom"
                (folder / "results.json").write_text(json.dumps(results))
                expected.setdefault((source, target), []).append(accuracy)
                job += 1
    # Hydra also writes multirun.yaml at the top; the summariser must ignore other files.
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return expected


def test_flatten_keeps_short_scalar_lists_only():
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "rows": [{"x": 1}], "long": list(range(100)), "s": "t"})
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "s": "t"}


def test_load_rows_in_job_order_with_overrides(tmp_path):
    fake_sweep(tmp_path, seeds=(0, 1))  # 18 jobs: "10" must come after "9", not after "1"
    (tmp_path / "3").rename(tmp_path / "x")  # non-numeric folder names come last
    rows = load_rows(tmp_path)
    assert [r["job"] for r in rows] == [str(i) for i in range(18) if i != 3] + ["x"]
    assert rows[0]["overrides"] == "source.data.drift.mode=none target.data.drift.mode=none seed=0"
    assert rows[7]["transfer.accuracy_pooled"] == pytest.approx(0.9 - 0.1 - 0.2)  # job 8: slow, slow, seed 0
    assert "transfer.per_unit.accuracy" not in rows[0]  # 40-entry list dropped
    assert rows[0]["config.thresholds"] == "[0.5, 1.0]"
    assert lookup(rows[6], "source.data.drift.mode") == "slow"  # found under config.
    assert lookup(rows[6], "nope") is None


def test_pivot_means_over_seeds_and_marks_missing(tmp_path):
    expected = fake_sweep(tmp_path, seeds=(0, 1, 2), fail=("fast", "fast"))
    rows = load_rows(tmp_path)
    table = pivot(rows, "source.data.drift.mode", "target.data.drift.mode", "transfer.accuracy_pooled")
    assert table.row_values == MODES and table.col_values == MODES
    for i, source in enumerate(MODES):
        for j, target in enumerate(MODES):
            if (source, target) == ("fast", "fast"):
                assert math.isnan(table.values[i][j]) and table.counts[i][j] == 0
            else:
                assert table.values[i][j] == pytest.approx(sum(expected[source, target]) / 3)
                assert table.counts[i][j] == 3
    text = format_pivot(table)
    assert "n=3" in text and "source.data.drift.mode \\ target.data.drift.mode" in text
    assert text.splitlines()[-1].split()[-1] == "-"
    single = pivot(rows, "target.data.drift.mode", None, "scratch.accuracy_pooled")
    assert single.col_values == ["scratch.accuracy_pooled"] and len(single.values) == 3


def test_cli_writes_csv_pivot_and_heatmap(tmp_path, capsys):
    fake_sweep(tmp_path, fail=("slow", "none"))
    code = main([str(tmp_path), "--rows", "source.data.drift.mode", "--cols", "target.data.drift.mode",
                 "--metric", "transfer.accuracy_pooled"])
    assert code == 0
    out = capsys.readouterr().out
    assert "9 results (1 not ok: 3)" in out
    assert "0.900" in out and "0.500" in out  # none/none and none/fast
    with open(tmp_path / "summary.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 9 and table[3]["status"] == "failed" and table[3]["error"] == "ValueError: boom"
    header = list(table[0])
    assert header[:4] == ["job", "status", "experiment", "overrides"]
    assert header.index("transfer.accuracy_pooled") < header.index("config.seed")
    png = tmp_path / "summary_transfer.accuracy_pooled.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"


def test_cli_unknown_key_names_similar_ones(tmp_path):
    fake_sweep(tmp_path)
    result = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "summarize.py"), str(tmp_path),
         "--rows", "source.data.drift.mode", "--metric", "transfer.accuracy"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "no result has 'transfer.accuracy'" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 1
