"""Regression tests that pin the science, so a change that alters results fails.

- fast: on tiny data, a backbone pretrained on one recording transfers to another; both arms
  fine-tuned with K = 5 labelled spikes per unit reach a stated accuracy, transfer at least
  scratch's (measured on the reference machine: transfer 1.000, scratch 0.781).
- slow (`make test-slow`): `make demo`'s configuration from an empty cache, synthesis and
  pretraining included; its table's accuracies must be the README's within the tolerance below
  (on the reference machine they are equal to every printed digit; another CPU may round XLA's
  and the native kernels' sums differently).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esort_jax.evaluate import EvaluationConfig
from esort_jax.pipeline import PipelineConfig, fit, sort_and_evaluate
from esort_jax.train import TrainConfig
from esort_jax.transfer import TransferConfig
from esort_jax.windows import WindowConfig
from tests._tiny import TINY_MODEL, fast_compile, tiny_recording  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]

# make demo's table (README, "The demo"): arm -> (acc_pool, acc_mean, acc_med, well detected)
DEMO_TABLE = {"transfer": (0.922, 0.918, 0.958, 45), "scratch": (0.884, 0.879, 0.958, 40)}
DEMO_TOLERANCE = 0.01  # accuracy; well-detected units within 2
TINY_MINIMUM = {"transfer": 0.95, "scratch": 0.6}


def test_tiny_transfer_and_scratch_reach_their_accuracy(tmp_path):
    source, source_truth = tiny_recording(num_units=3, duration_s=2.0, seed=11)
    target, truth = tiny_recording(num_units=3, duration_s=2.0, seed=0)
    base = PipelineConfig(model=TINY_MODEL, windows=WindowConfig(train_fraction=1.0),
                          train=TrainConfig(epochs=4, batch_size=64, progress=False),
                          evaluation=EvaluationConfig(window_metrics_max=0))
    pretrained = fit(source, source_truth, base, seed=1, run_dir=tmp_path / "pretrain").train_result.checkpoint
    accuracy = {}
    for arm in ("transfer", "scratch"):
        config = base.replace(
            windows=WindowConfig(spikes_per_unit=5), train=TrainConfig(epochs=10, batch_size=64, progress=False),
            transfer=TransferConfig(init=arm, checkpoint=str(pretrained) if arm == "transfer" else None),
        )
        fitted = fit(target, truth, config, seed=0)
        assert fitted.windows.report["kept_spikes"] == [5, 5, 5]
        accuracy[arm] = sort_and_evaluate(fitted, target, truth, config).evaluation.accuracy_pooled
    for arm, minimum in TINY_MINIMUM.items():
        assert accuracy[arm] >= minimum, accuracy
    assert accuracy["transfer"] >= accuracy["scratch"], accuracy


@pytest.mark.slow
def test_demo_table_is_the_readmes(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "ESORT_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "transfer.py"), f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=3600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "ok" and results["pretrain"]["cache_hit"] is False
    for arm, (pooled, mean, median, well) in DEMO_TABLE.items():
        row = results[arm]
        measured = (row["accuracy_pooled"], row["accuracy_mean"], row["accuracy_median"])
        assert measured == pytest.approx((pooled, mean, median), abs=DEMO_TOLERANCE), (arm, measured)
        assert abs(row["well_detected"] - well) <= 2, (arm, row["well_detected"])
