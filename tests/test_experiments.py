"""Experiment configs compose and entry points run end to end on tiny data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from data_gen import SynthesisConfig
from esort_jax.config import ConfigError, from_dict
from esort_jax.io import read_recording_folder

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
DATA_OPTIONS = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))


def _run(script, *overrides, cwd=None, timeout=600):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, str(REPO / "experiments" / script), *overrides],
        capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=timeout,
    )


@pytest.mark.parametrize("option", DATA_OPTIONS)
def test_every_data_config_composes_and_validates(option):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("synthesize", overrides=[f"data={option}"])
    from omegaconf import OmegaConf

    data = from_dict(SynthesisConfig, OmegaConf.to_container(cfg.data, resolve=True), "data")
    assert data.duration_s > 0


def test_bad_data_value_names_the_key():
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("synthesize", overrides=["data=tiny", "data.noise.std_uv=-1"])
    from omegaconf import OmegaConf

    with pytest.raises(ConfigError, match=r"data\.noise\.std_uv: must be >= 0"):
        from_dict(SynthesisConfig, OmegaConf.to_container(cfg.data, resolve=True), "data")


def test_synthesize_writes_recording_and_results(tmp_path):
    result = _run("synthesize.py", "data=tiny", "logger=disabled", "seed=3", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "ok" and results["seed"] == 3
    assert results["config"]["data"]["seed"] == 3
    assert results["devices"]["device_count"] >= 1
    recording, truth = read_recording_folder(tmp_path / "recording")
    assert recording.num_channels == 16 and truth.num_units == 5
    assert results["summary"]["num_spikes"] == truth.num_spikes


def test_synthesize_bad_config_fails_early_with_key(tmp_path):
    result = _run("synthesize.py", "data=tiny", "logger=disabled", "data.duration_s=0", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "data.duration_s: must be > 0" in result.stderr + result.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed" and "data.duration_s" in results["error"]
    assert not (tmp_path / "recording").exists()


def test_unknown_group_option_is_reported(tmp_path):
    result = _run("synthesize.py", "data=nope", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "nope" in result.stderr and "data" in result.stderr


TINY_TRANSFER = [
    "data@target.data=tiny", "data@source.data=tiny", "model=small",
    "train@pretrain.train=tiny", "train@finetune.train=tiny", "k=3", "logger=disabled",
]


def test_transfer_runs_both_arms_and_reuses_cache(tmp_path):
    cache = tmp_path / "cache"
    first = _run("transfer.py", *TINY_TRANSFER, f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'a'}")
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    for arm in ("transfer", "scratch"):
        row = results[arm]
        for key in ("accuracy_pooled", "accuracy_mean", "accuracy_median", "precision", "recall",
                    "well_detected", "n_units", "sort_seconds"):
            assert key in row, (arm, key)
        assert row["n_units"] == 5 and row["k"] == 3
        assert row["threshold_curve"]["span"][1] <= results["config"]["target"]["data"]["duration_s"] * 32000 / 2
    assert results["transfer"]["transfer_report"]["init"] == "transfer"
    assert results["pretrain"]["cache_hit"] is False
    assert "acc_pool" in first.stdout and "scratch" in first.stdout
    second = _run("transfer.py", *TINY_TRANSFER, "arms=[transfer]", f"cache_dir={cache}",
                  f"hydra.run.dir={tmp_path / 'b'}")
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    assert again["pretrain"]["cache_hit"] is True and again["pretrain"]["checkpoint"] == results["pretrain"]["checkpoint"]
    assert "cache hit: recordings/" in second.stdout


@pytest.mark.parametrize(
    "override, key",
    [("k=0", "finetune.windows.spikes_per_unit"), ("finetune.train.learning_rate=-1", "finetune.train.learning_rate"),
     ("postprocess.threshold=20", "postprocess.threshold")],
)
def test_transfer_bad_values_fail_early(tmp_path, override, key):
    result = _run("transfer.py", *TINY_TRANSFER, override, f"cache_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'r'}")
    assert result.returncode != 0
    assert key in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "recordings").exists()  # nothing was built


def test_pretrain_then_finetune_entry_points(tmp_path):
    cache = f"cache_dir={tmp_path / 'cache'}"
    pre = _run("pretrain.py", "data@source.data=tiny", "model=small", "train=tiny", "logger=disabled", cache,
               f"hydra.run.dir={tmp_path / 'pre'}")
    assert pre.returncode == 0, pre.stderr[-3000:]
    checkpoint = tmp_path / "pre" / "checkpoint"
    assert (checkpoint / "metadata.json").is_file()
    pre_results = json.loads((tmp_path / "pre" / "results.json").read_text())
    assert pre_results["epochs_completed"] == 2 and len(pre_results["history"]) == 2
    fine = _run("finetune.py", "data@target.data=tiny", "model=small", "train=tiny", "k=3", "logger=disabled",
                cache, f"checkpoint={checkpoint}", f"hydra.run.dir={tmp_path / 'fine'}")
    assert fine.returncode == 0, fine.stderr[-3000:]
    results = json.loads((tmp_path / "fine" / "results.json").read_text())
    assert results["transfer"]["transfer_report"]["init"] == "transfer"
    defaults = json.loads((tmp_path / "fine" / "checkpoint" / "sorting_defaults.json").read_text())
    assert defaults["threshold"] == results["transfer"]["threshold"]
    sort = _run("sort.py", "data@recording.data=tiny", "logger=disabled", cache,
                f"checkpoint={tmp_path / 'fine' / 'checkpoint'}", f"hydra.run.dir={tmp_path / 'sort'}")
    assert sort.returncode == 0, sort.stderr[-3000:]
    sorted_results = json.loads((tmp_path / "sort" / "results.json").read_text())
    assert sorted_results["threshold"] == defaults["threshold"] and "metrics" in sorted_results
    import spikeinterface

    si_sorting = spikeinterface.load(tmp_path / "sort" / "sorting" / "si")
    assert si_sorting.to_spike_vector().size == sorted_results["num_spikes"]
    wrong = _run("sort.py", "data@recording.data=tiny", "recording.data.probe.n_channels=8", "logger=disabled",
                 cache, f"checkpoint={tmp_path / 'fine' / 'checkpoint'}", f"hydra.run.dir={tmp_path / 'wrong'}")
    assert wrong.returncode != 0 and "trained on 16 channels but the recording has 8" in wrong.stderr
    missing = _run("finetune.py", "data@target.data=tiny", "model=small", "train=tiny", "logger=disabled", cache,
                   f"checkpoint={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path / 'bad'}")
    assert missing.returncode != 0 and "checkpoint:" in missing.stderr


def test_benchmark_writes_flat_keys(tmp_path):
    result = _run("benchmark.py", "data.duration_s=1", "data.probe.n_channels=16", "data.units.n_units=4",
                  "model=small", "rss_durations=[0.5,1]", "repeats=1", "max_wait_s=0", "naive_seconds=0.1",
                  "logger=disabled", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'b'}")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    for key in ("realtime_factor", "inference_realtime_factor", "postprocess_realtime_factor", "achieved_gflops",
                "matmul_peak_gflops", "naive_realtime_factor", "peak_rss_mb_short", "peak_rss_mb_long",
                "n_channels", "n_units", "duration_s"):
        assert isinstance(results[key], (int, float)) and results[key] > 0, key
    assert results["n_channels"] == 16 and results["n_units"] == 4
