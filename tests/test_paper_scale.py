"""Paper-scale smoke run (`make test-slow`): transfer.py with experiment=paper_np1 on CPU.

Everything at the paper's scale (384 Neuropixels sites, the paper's network, batch 1024, source at
15 000 neurons/mm³, K = 10) except the length of the recordings and the number of epochs, so
the whole path (synthesis, pretraining, transfer, inference, post-processing, evaluation) runs
on 384 channels in minutes instead of hours.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_transfer_paper_np1_smoke(tmp_path):
    overrides = [
        "experiment=paper_np1",
        "pretrain.train.epochs=1",
        "finetune.train.epochs=1",
        "target.data.duration_s=5",
        "source.data.duration_s=5",
        "logger=disabled",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "transfer.py"), *overrides],
        capture_output=True, text=True, cwd=REPO, timeout=3600,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    elapsed = time.perf_counter() - started
    print(f"paper-scale smoke run: {elapsed:.0f} s")
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    config = results["config"]
    assert results["status"] == "ok"
    assert results["target"]["num_channels"] == 384
    assert config["model"]["temporal_features"] == [8, 16] and config["model"]["spatial_features"] == 256
    assert config["pretrain"]["train"]["batch_size"] == 1024 and config["finetune"]["train"]["batch_size"] == 1024
    assert config["source"]["data"]["units"]["density_per_mm3"] == 15000.0
    assert results["k"] == 10
    assert results["pretrain"]["source_units"] > results["target"]["num_units"] > 0
    for arm in ("transfer", "scratch"):
        row = results[arm]
        assert row["n_units"] == results["target"]["num_units"]
        assert 0.0 <= row["accuracy_pooled"] <= 1.0 and row["sort_seconds"] > 0
        assert row["training"]["epochs"] == 1
    report = results["transfer"]["transfer_report"]
    assert report["init"] == "transfer" and "backbone.spatial.dense" in report["transferred"]
