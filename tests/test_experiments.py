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
