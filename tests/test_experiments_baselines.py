"""experiments/baselines.py end to end on tiny data with faked sorters (tests/_fake_sorters.py):
the sorters' entries, E-Sort's arms, the comparison (rows, CSV, figure, table, K to reach) and
a failed sorter reported, not raised. The real sorters run in tests/test_baselines.py
(`-m baselines`)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_baselines_entry_point_with_fake_sorters(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "_fake_sorters.py"), str(REPO / "experiments" / "baselines.py"),
         "data@target.data=tiny", "data@source.data=tiny", "model=small", "train@pretrain.train=tiny",
         "train@finetune.train=tiny", "esort.ks=[2]", "sorters=[tridesclous2,spykingcircus2]",
         "reference_sorter=tridesclous2", "logger=disabled", f"cache_dir={tmp_path / 'cache'}",
         f"hydra.run.dir={run}"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "WANDB_MODE": "disabled", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "ok" and results["failed_sorters"] == ["spykingcircus2"]
    sorter = results["sorters"]["tridesclous2"]
    assert sorter["status"] == "ok" and sorter["sorter_version"] == "fake-1" and sorter["sorter_run_seconds"] == 5.0
    assert sorter["num_units_found"] == 1 and sorter["sorted_span"] == results["spans"]["sorted_span"]
    assert (run / "sorters" / "tridesclous2" / "sorting.npz").is_file()
    assert "fake crash" in results["sorters"]["spykingcircus2"]["error"]
    assert "spykingcircus2 FAILED" in result.stdout
    for arm in ("transfer", "scratch"):
        entry = results["esort"]["k2"][arm]
        assert entry["status"] == "ok" and entry["sorter_version"] == "esort_jax" and entry["train_seconds"] > 0
        assert all(entry[key] is not None for key in ("labels_used_spikes", "labelled_seconds", "threshold_labels",
                                                       "train_steps")), entry
    assert [r["method"] for r in results["rows"]] == ["tridesclous2", "spykingcircus2", "transfer K=2", "scratch K=2"]
    assert set(results["k_to_reach"]) == {"tridesclous2"} and results["reference_sorter"] == "tridesclous2"
    assert results["speed_ratio"]["spykingcircus2"] is None and results["speed_ratio"]["tridesclous2"] > 0
    with open(run / "comparison.csv") as handle:
        assert [row["method"] for row in csv.DictReader(handle)] == [r["method"] for r in results["rows"]]
    assert (run / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert results["table"].startswith("method") and "K to reach tridesclous2's accuracy_pooled" in results["table"]
    assert "Sorters and E-Sort on the target's held-out span: 5 units, 16 channels" in result.stdout
