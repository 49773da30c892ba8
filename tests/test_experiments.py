"""Experiment configs compose and entry points run end to end on tiny data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from data_gen import SynthesisConfig
from esort_jax.accounting import ACCOUNTING_KEYS
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
        for key in ("accuracy_pooled", "accuracy_mean", "accuracy_median", "precision_pooled", "recall_pooled",
                    "well_detected", "n_units", "sort_seconds", *ACCOUNTING_KEYS, "accuracy_mean_snr_above"):
            assert key in row, (arm, key)
        assert row["labels_used_spikes"] > 3 * 5 and row["train_steps"] == row["training"]["steps"] > 0
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


@pytest.mark.slow  # ~30 s: the sorting benchmark end to end (make test-slow)
def test_benchmark_writes_flat_keys(tmp_path):
    result = _run("benchmark.py", "data.duration_s=2", "data.probe.n_channels=16", "data.units.n_units=4",
                  "model=small", "train_epochs=1", "train_k=2", "rss_durations=[0.5,1]", "repeats=1", "max_wait_s=0", "naive_seconds=0.1",
                  "naive_per_window_seconds=0.01",
                  "logger=disabled", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'b'}")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    for key in ("realtime_factor", "inference_realtime_factor", "postprocess_realtime_factor", "achieved_gflops",
                "matmul_peak_gflops", "naive_realtime_factor", "naive_batched_realtime_factor", "conv_over_naive",
                "conv_over_naive_batched", "fraction_of_peak", "peak_rss_mb_short", "peak_rss_mb_long",
                "n_channels", "n_units", "duration_s"):
        assert isinstance(results[key], (int, float)) and results[key] > 0, key
    assert results["n_channels"] == 16 and results["n_units"] == 4
    # every timed run carries the peak measured just before it; the reported figures are the best run's
    best = min(results["inference_runs"], key=lambda r: r["seconds"])
    assert results["matmul_peak_gflops"] == best["peak_gflops"]
    assert abs(results["fraction_of_peak"] - results["achieved_gflops"] / best["peak_gflops"]) < 1e-9


# ----------------------------------------------------------------------------------------------
# conf/experiment/*.yaml and the label-efficiency entry point

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
TINY_LABEL_EFFICIENCY = [o for o in TINY_TRANSFER if not o.startswith("k=")] + ["ks=[1,3]", "seeds=[0,1]"]


def _validate_composed(cfg):
    """Every typed config of a composed transfer / label_efficiency config; the probes build."""
    from omegaconf import OmegaConf

    from data_gen import probe_from_config
    from esort_jax.infer import InferenceConfig
    from esort_jax.model import ModelConfig
    from esort_jax.evaluate import EvaluationConfig
    from esort_jax.postprocess import PostprocessConfig
    from esort_jax.train import TrainConfig
    from esort_jax.transfer import TransferConfig
    from esort_jax.windows import WindowConfig

    def node(key):
        return OmegaConf.to_container(OmegaConf.select(cfg, key), resolve=True)

    for key in ("target.data", "source.data"):
        data = from_dict(SynthesisConfig, node(key), key)
        assert probe_from_config(data.probe, f"{key}.probe").get_contact_count() == 16
    for cls, key in [(ModelConfig, "model"), (TrainConfig, "pretrain.train"), (TrainConfig, "finetune.train"),
                     (WindowConfig, "pretrain.windows"), (WindowConfig, "finetune.windows"),
                     (InferenceConfig, "infer"), (PostprocessConfig, "postprocess"),
                     (EvaluationConfig, "evaluation")]:
        from_dict(cls, node(key), key)
    from_dict(TransferConfig, {**node("finetune.transfer"), "init": "scratch"}, "finetune.transfer")
    assert set(cfg.arms) <= {"transfer", "scratch"}
    if "ks" in cfg:
        assert all(int(k) >= 1 for k in cfg.ks)


@pytest.mark.parametrize("config_name", ["transfer", "label_efficiency"])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_config_composes_with_tiny_overrides(experiment, config_name):
    """Each experiment file composes on both entry points with the tiny overrides, and so does
    every value of the sweep it declares (hydra.sweeper.params)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("add"):
        OmegaConf.register_new_resolver("add", lambda *values: sum(values))
    tiny = TINY_TRANSFER if config_name == "transfer" else TINY_LABEL_EFFICIENCY
    overrides = [f"experiment={experiment}", *tiny]
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        assert cfg.target.data.duration_s == 2.0  # the tiny override wins over the experiment's data
        _validate_composed(cfg)
        params = cfg.hydra.sweeper.get("params")
        sweep = OmegaConf.to_container(params, resolve=False) if params is not None else {}
        for key, values in sweep.items():
            for value in str(values).split(","):
                swept = compose(config_name, overrides=[*overrides, f"{key}={value}"])
                _validate_composed(swept)
                assert str(OmegaConf.select(swept, key)) == value, (key, value)


def test_paper_np1_is_paper_scale():
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        transfer = compose("transfer", overrides=["experiment=paper_np1"])
        curves = compose("label_efficiency", overrides=["experiment=paper_np1"])
    for cfg in (transfer, curves):
        for side in ("target", "source"):
            assert cfg[side].data.probe.n_channels is None and cfg[side].data.duration_s == 100.0
        assert cfg.pretrain.train.epochs == 50 and cfg.finetune.train.epochs == 50
        assert cfg.source.data.units.density_per_mm3 == 15000.0
    assert transfer.k == 10 and transfer.finetune.windows.spikes_per_unit == 10
    assert list(curves.ks) == [5, 10, 15]


def test_label_efficiency_writes_csv_curves_and_figures(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "label_efficiency.py"), *TINY_LABEL_EFFICIENCY,
         "reference_accuracy=0.5", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        # tiny shapes: compile time dominates, so compile without most optimisations
        env={**os.environ, "WANDB_MODE": "disabled", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "ok" and results["ks"] == [1, 3] and results["seeds"] == [0, 1]
    rows = results["rows"]
    assert sorted((r["seed"], r["k"], r["arm"]) for r in rows) == sorted(
        (s, k, a) for s in (0, 1) for k in (1, 3) for a in ("transfer", "scratch"))
    for row in rows:
        assert row["n_units"] == 5 and row["short_units_policy"] == "keep_all"
        assert all(row[key] is not None for key in ACCOUNTING_KEYS), row
        assert (run / f"seed{row['seed']}" / f"k{row['k']}" / row["arm"] / "sorting.npz").is_file()
    import csv

    with open(run / "label_efficiency.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 8 and list(table[0])[:3] == ["seed", "k", "arm"]
    assert float(table[0]["accuracy_pooled"]) == pytest.approx(rows[0]["accuracy_pooled"])
    summary = {(s["k"], s["arm"]): s for s in results["summary"]}
    assert set(summary) == {(k, a) for k in (1, 3) for a in ("transfer", "scratch")}
    import numpy as np

    for (k, arm), entry in summary.items():
        values = [r["accuracy_pooled"] for r in rows if r["k"] == k and r["arm"] == arm]
        assert entry["n_seeds"] == 2
        assert entry["accuracy_pooled_mean"] == pytest.approx(np.mean(values))
        assert entry["accuracy_pooled_std"] == pytest.approx(np.std(values, ddof=1))
        for metric in ("accuracy_mean", "well_detected", "window_jaccard"):
            assert entry[f"{metric}_mean"] is not None
        assert results["by_k"][f"k{k}"][arm]["accuracy_pooled_mean"] == entry["accuracy_pooled_mean"]
    assert [g["k"] for g in results["gain"]["accuracy_pooled"]] == [1, 3]
    reduction = results["label_reduction"]
    assert len(reduction["levels"]) == 2 and "text" in reduction["headline"]
    assert [level["at_k"] for level in reduction["levels"]] == [1, 3]
    assert reduction["reference"]["level"] == 0.5
    assert "keep_all" in results["short_units_note"]
    assert set(results["per_seed"]) == {"0", "1"} and results["per_seed"]["0"]["pretrain"]["cache_hit"] is False
    for name in ("label_efficiency", "accuracy_gain", "label_reduction"):
        assert (run / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "label reduction" in result.stdout and "gain" in result.stdout


def test_label_efficiency_bad_ks_fail_early(tmp_path):
    result = _run("label_efficiency.py", *TINY_LABEL_EFFICIENCY, "ks=[0,2]", f"cache_dir={tmp_path}",
                  f"hydra.run.dir={tmp_path / 'r'}")
    assert result.returncode != 0 and "ks: every entry must be an integer >= 1" in result.stderr
    assert not (tmp_path / "recordings").exists()


def test_sort_refuses_recordings_that_do_not_fit_the_checkpoint():
    """experiments/sort.py checks channel count, sampling rate and length before any work
    (esort_jax.sort.check_recording_fits)."""
    import numpy as np

    from esort_jax import ArrayTraces, Recording
    from esort_jax.checkpoint import CheckpointMetadata
    from esort_jax.model import ModelConfig
    from esort_jax.sort import check_recording_fits

    meta = CheckpointMetadata(ModelConfig(window=20, anchor=9), num_channels=4, num_units=2,
                              unit_ids=np.arange(2), sampling_frequency=32000.0)
    positions = np.stack([np.zeros(4), 20.0 * np.arange(4)], 1)

    def recording(samples=100, channels=4, fs=32000.0):
        return Recording(ArrayTraces(np.zeros((samples, channels), np.float32)), fs, positions[:channels])

    check_recording_fits(meta, recording(), "checkpoint: ckpt")  # fits: no error
    with pytest.raises(ConfigError, match="^checkpoint: ckpt was trained on 4 channels but the recording has 3"):
        check_recording_fits(meta, recording(channels=3), "checkpoint: ckpt")
    with pytest.raises(ConfigError, match="trained at 32000 Hz but the recording is sampled at 30000 Hz"):
        check_recording_fits(meta, recording(fs=30000.0), "checkpoint: ckpt")
    with pytest.raises(ConfigError, match="^recording: 19 samples is shorter than one window"):
        check_recording_fits(meta, recording(samples=19), "checkpoint: ckpt")

    # preprocessing recorded in the checkpoint: bad values name the file and key; bad modes the key
    from esort_jax.realdata.preprocess import preprocess_as_trained

    where = "ckpt/metadata.json extra.preprocess"
    assert preprocess_as_trained(recording(), None, "checkpoint", where).metadata == {}  # none recorded
    recorded = {"enabled": True, "freq_max_hz": 100.0}
    with pytest.raises(ConfigError, match=r"ckpt/metadata.json extra.preprocess.freq_max_hz: must be above"):
        preprocess_as_trained(recording(), recorded, "checkpoint", where)
    assert preprocess_as_trained(recording(), recorded, "none", where).metadata == {}
    with pytest.raises(ConfigError, match="preprocess: must be 'checkpoint' or 'none'; got 'raw'"):
        preprocess_as_trained(recording(), recorded, "raw", where)


def test_source_on_a_recordings_geometry_uses_all_its_sites():
    """A source config that selects a 64-site block of a named probe, moved onto a 24-site
    recording's geometry: every site of the recording, its sampling rate, nothing of the block."""
    import dataclasses

    import numpy as np

    from data_gen import synthesize
    from data_gen.config import ProbeConfig
    from esort_jax import ArrayTraces, Recording

    positions = np.stack([np.tile([0.0, 32.0], 12), 20.0 * np.arange(24)], axis=1)
    recording = Recording(ArrayTraces(np.zeros((100, 24), np.float32)), 30000.0, positions)
    data = dataclasses.replace(
        SynthesisConfig(duration_s=0.2), probe=ProbeConfig(name="np1", n_channels=64, first_channel=8)
    )
    moved = data.on_geometry(recording.channel_positions, recording.sampling_frequency)
    source, _ = synthesize(moved)
    assert source.num_channels == 24 and source.sampling_frequency == 30000.0
    np.testing.assert_allclose(source.channel_positions, positions)
