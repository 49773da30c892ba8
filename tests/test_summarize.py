"""experiments/summarize.py (the command line) on fabricated sweep folders (no training); the
reading and pivoting it calls are tested in tests/test_report_results.py."""

import csv
import subprocess
import sys
from pathlib import Path

from experiments.summarize import main
from tests._sweep import fake_sweep

REPO = Path(__file__).resolve().parent.parent


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
