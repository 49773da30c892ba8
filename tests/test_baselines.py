"""Baseline sorters beside E-Sort: configuration, spans, shifting (fast, no torch), and real runs
of Kilosort4 / SpykingCircus2 / Tridesclous2 (`-m baselines`, which need `make baselines-venv`
and FAIL, not skip, without it). The comparison maths: test_report_comparison.py."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from esort_jax.realdata import baselines
from esort_jax.realdata.baselines import BaselinesConfig, SorterFailed, shift_sorting, sorted_span
from esort_jax.config import ConfigError, from_dict
from esort_jax.evaluate import evaluate
from esort_jax.model import ModelConfig
from esort_jax.recording import ArrayTraces, Recording, Sorting
from esort_jax.windows import WindowConfig, make_windows, split_spans

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
FS = 32000.0

if not OmegaConf.has_resolver("add"):
    OmegaConf.register_new_resolver("add", lambda *values: sum(values))


def _compose(name, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(name, overrides=list(overrides))


def _run(*overrides, timeout=600):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, str(REPO / "experiments" / "baselines.py"), *overrides],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout,
    )


def _recording(num_samples=4000, num_channels=4, seed=0):
    rng = np.random.default_rng(seed)
    traces = rng.standard_normal((num_samples, num_channels)).astype(np.float32)
    positions = np.stack([np.zeros(num_channels), 20.0 * np.arange(num_channels)], axis=1)
    return Recording(ArrayTraces(traces), FS, positions)


# ----------------------------------------------------------------------------------------------
# Configuration


def test_unknown_sorter_in_the_config_names_the_key_and_the_known_sorters():
    from experiments._plans import read_plan

    cfg = _compose("baselines", "sorters=[kilosort4,kilosort5]", "logger=disabled")
    with pytest.raises(ConfigError, match=r"^sorters\[1\]: unknown sorter 'kilosort5'; known sorters: "
                                          r"kilosort4, spykingcircus2, tridesclous2$"):
        read_plan(BaselinesConfig, cfg)
    plan = read_plan(BaselinesConfig, _compose("baselines", "logger=disabled"))
    assert plan.sorters == ("kilosort4", "spykingcircus2", "tridesclous2") and plan.span == "full"
    assert plan.overrides("kilosort4") == {"torch_device": "cpu"} and plan.overrides("tridesclous2") == {}


@pytest.mark.parametrize("mapping, key", [
    ({"sorters": []}, r"^sorters: must name at least one"),
    ({"sorters": ["tridesclous2", "tridesclous2"], "reference_sorter": None}, r"^sorters: entries must be distinct"),
    ({"span": "half"}, r"^span: 'half' is not one of \['eval', 'full'\]"),
    ({"sorter_params": {"mountainsort5": {}}}, r"^sorter_params\.mountainsort5: unknown sorter"),
    ({"sorter_params": {"kilosort4": 3}}, r"^sorter_params\.kilosort4: must be a mapping"),
    ({"n_jobs": 0}, r"^n_jobs: must be -1"),
    ({"sorters": ["tridesclous2"]}, r"^reference_sorter: must be one of sorters \['tridesclous2'\] or null"),
])
def test_bad_plans_fail_with_the_key(mapping, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(BaselinesConfig, mapping, "")


def test_esort_arms_validation_names_the_key():
    from experiments._plans import ESortArms

    assert from_dict(ESortArms, {"ks": []}, "esort").ks == ()
    with pytest.raises(ConfigError, match=r"^esort\.ks\[1\]: must be >= 1"):
        from_dict(ESortArms, {"ks": [5, 0]}, "esort")
    with pytest.raises(ConfigError, match=r"^esort\.ks: entries must be distinct"):
        from_dict(ESortArms, {"ks": [5, 5]}, "esort")
    with pytest.raises(ConfigError, match=r"^esort\.arms: must be a non-empty subset"):
        from_dict(ESortArms, {"arms": ["transfer", "finetune"]}, "esort")


def test_unknown_sorter_parameter_names_the_key(monkeypatch):
    # The parameter check runs against the sorter's own list (faked here: no sorter needed).
    monkeypatch.setattr(baselines, "require_installed", lambda name: None)
    import spikeinterface.sorters as ss

    monkeypatch.setattr(ss, "get_default_sorter_params", lambda name: {"torch_device": "auto", "nblocks": 1})
    assert baselines.sorter_params("kilosort4", {"nblocks": 0}) == {"torch_device": "cpu", "nblocks": 0}
    with pytest.raises(ConfigError, match=r"^sorter_params\.kilosort4\.nblock: not a parameter of kilosort4 "
                                          r"\(known: nblocks, torch_device\)"):
        baselines.sorter_params("kilosort4", {"nblock": 0})


def test_unseeded_sorter_seeds_get_ours_unless_given_and_sorters_that_seed_themselves_keep_theirs(monkeypatch):
    monkeypatch.setattr(baselines, "require_installed", lambda name: None)
    import spikeinterface.sorters as ss

    defaults = {"tridesclous2": {"seed": None, "detect_threshold": 5.0},
                "mountainsort5": {"whitening_seed": None, "seeded": None},
                "spykingcircus2": {"seed": 42}}
    monkeypatch.setattr(ss, "get_default_sorter_params", lambda name: defaults[name])
    monkeypatch.setattr(baselines, "check_spikeinterface_sorter", lambda name, where: None)
    assert baselines.sorter_params("tridesclous2") == {"seed": baselines.SORTER_SEED}
    assert baselines.sorter_params("tridesclous2", {"seed": 7}) == {"seed": 7}
    assert baselines.sorter_params("tridesclous2", {"seed": None}) == {"seed": None}  # asked for: unseeded
    assert baselines.sorter_params("mountainsort5") == {"whitening_seed": baselines.SORTER_SEED}
    assert baselines.sorter_params("spykingcircus2") == {}


def test_missing_sorter_says_which_make_target_installs_it(monkeypatch):
    monkeypatch.setattr(baselines, "SORTER_MODULES", {**baselines.SORTER_MODULES,
                                                      "kilosort4": ("numpy", "no_such_module_xyz")})
    with pytest.raises(baselines.SorterNotInstalled, match=r"missing Python module\(s\) no_such_module_xyz;.*"
                                                           r"`make baselines-venv`"):
        baselines.require_installed("kilosort4")


def test_entry_point_rejects_an_unknown_sorter_before_any_work(tmp_path):
    result = _run("sorters=[kilosort4,nope]", "logger=disabled", f"cache_dir={tmp_path / 'cache'}",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert "sorters[1]: unknown sorter 'nope'" in result.stderr + result.stdout
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed" and "sorters[1]" in results["error"]
    assert not (tmp_path / "cache").exists()  # failed before synthesising anything


# ----------------------------------------------------------------------------------------------
# Spans and shifting


def test_eval_span_is_the_one_transfer_scores():
    """baselines.yaml and transfer.yaml split a recording identically, and the split is the one
    make_windows uses; the scored span is the anchors of the windows inside it."""
    from esort_jax.realdata.baselines import evaluation_spans

    transfer = _compose("transfer", "logger=disabled", "k=3")
    ours = _compose("baselines", "logger=disabled")
    t_windows = from_dict(WindowConfig, OmegaConf.to_container(transfer.finetune.windows, resolve=True), "w")
    o_windows = from_dict(WindowConfig, OmegaConf.to_container(ours.finetune.windows, resolve=True), "w")
    model = from_dict(ModelConfig, OmegaConf.to_container(ours.model, resolve=True), "model")

    recording = _recording(num_samples=48_001)
    spikes = np.arange(200, 48_000, 150)
    truth = Sorting(spikes, np.arange(spikes.size) % 2, np.array([7, 9]), FS)
    windows = make_windows(recording, truth, t_windows, window=model.window, anchor=model.anchor, seed=0)
    spans = evaluation_spans(recording.num_samples, o_windows, model, "eval")
    assert tuple(spans["eval_span"]) == windows.eval_span == (24_000, 48_001)
    assert split_spans(recording.num_samples, o_windows)[1] == split_spans(recording.num_samples, t_windows)[1]
    e0, e1 = windows.eval_span
    first_anchor, last_anchor = e0 + model.anchor, (e1 - model.window) + model.anchor
    assert tuple(spans["scored_span"]) == (first_anchor, last_anchor + 1)
    assert tuple(spans["sorted_span"]) == windows.eval_span
    assert tuple(evaluation_spans(recording.num_samples, o_windows, model, "full")["sorted_span"]) == (0, 48_001)


def test_sorted_span_modes():
    assert sorted_span("eval", 100, (50, 100)) == (50, 100)
    assert sorted_span("full", 100, (50, 100)) == (0, 100)
    with pytest.raises(ConfigError, match="span: must be 'eval' or 'full'"):
        sorted_span("half", 100, (50, 100))


def test_shift_sorting_moves_span_samples_back_to_absolute():
    relative = Sorting(np.array([0, 5, 5, 90]), np.array([1, 0, 1, 0]), np.array([3, 4]), FS)
    absolute = shift_sorting(relative, 1000)
    assert absolute.samples.tolist() == [1000, 1005, 1005, 1090]
    assert absolute.unit_indices.tolist() == relative.unit_indices.tolist()
    assert absolute.unit_ids.tolist() == [3, 4] and absolute.sampling_frequency == FS
    assert relative.samples.tolist() == [0, 5, 5, 90]  # unchanged


def _fake_sorter(monkeypatch, run_sorter):
    import spikeinterface.sorters as ss

    monkeypatch.setattr(baselines, "sorter_params", lambda name, overrides=None, where="": dict(overrides or {}))
    monkeypatch.setattr(baselines, "sorter_version", lambda name: "fake-1")
    monkeypatch.setattr(ss, "run_sorter", run_sorter)


def test_run_baseline_sorts_exactly_the_span_and_returns_absolute_samples(monkeypatch, tmp_path):
    """The plumbing of run_baseline with SpikeInterface's run_sorter replaced by a fake that
    checks what it is given (the span's traces) and 'finds' the true spikes in span-relative
    samples, as a sorter does."""
    from spikeinterface.core import NumpySorting

    recording = _recording(num_samples=6000)
    start, stop = 2500, 5500
    spikes = np.array([100, 2600, 3000, 5400, 5900])
    seen = {}

    def run_sorter(name, si_recording, folder, **kwargs):
        seen.update(name=name, folder=folder, params={k: v for k, v in kwargs.items()
                                                      if k not in ("remove_existing_folder", "verbose", "raise_error")})
        seen["traces_equal"] = np.array_equal(si_recording.get_traces(), recording.read(start, stop))
        seen["serialisable"] = si_recording.check_serializability("json")
        inside = spikes[(spikes >= start) & (spikes < stop)] - start
        return NumpySorting.from_samples_and_labels([inside], [np.zeros(inside.size, int)], FS, unit_ids=[42])

    _fake_sorter(monkeypatch, run_sorter)
    result = baselines.run_baseline("tridesclous2", recording, tmp_path / "out", span=(start, stop),
                                    params={"detect_threshold": 6.0})
    assert seen["name"] == "tridesclous2" and seen["traces_equal"] and seen["serialisable"]
    assert seen["params"] == {"detect_threshold": 6.0}
    assert Path(seen["folder"]) == tmp_path / "out" / "sorter"
    assert result.sorting.samples.tolist() == [2600, 3000, 5400]
    assert result.sorting.unit_ids.tolist() == [42] and result.num_units_found == 1
    assert result.span == (start, stop) and result.sorted_duration_s == pytest.approx(3000 / FS)
    assert result.version == "fake-1" and result.wall_seconds > 0
    assert not (tmp_path / "out" / "recording_binary").exists()  # the untimed copy is cleaned up


def test_recording_copy_is_removed_with_a_warning_for_phy_or_kept(monkeypatch, tmp_path):
    """A recording SpikeInterface cannot serialise is copied for the sorter; a Phy params.py
    (as Kilosort writes) pointing to the copy gets a warning when the copy is removed."""
    from spikeinterface.core import NumpySorting

    recording = _recording()

    def run_sorter(name, si_recording, folder, **kwargs):
        out = Path(folder) / "sorter_output"
        out.mkdir(parents=True)
        binary = si_recording.get_binary_description()["file_paths"][0]
        (out / "params.py").write_text(f"dat_path = {str(binary)!r}\nn_channels_dat = 4\n")
        return NumpySorting.from_samples_and_labels([np.array([10])], [np.zeros(1, int)], FS, unit_ids=[0])

    _fake_sorter(monkeypatch, run_sorter)
    with pytest.warns(UserWarning, match=r"params.py: dat_path points to .*recording_binary.*keep_recording_copy=True"):
        baselines.run_baseline("tridesclous2", recording, tmp_path / "out", span=(1000, 3000))
    assert not (tmp_path / "out" / "recording_binary").exists()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # kept: no warning about params.py
        baselines.run_baseline("tridesclous2", recording, tmp_path / "kept", span=(1000, 3000),
                               keep_recording_copy=True)
    params_text = (tmp_path / "kept" / "sorter" / "sorter_output" / "params.py").read_text()
    kept_binary = eval(params_text.split("dat_path = ")[1].splitlines()[0])
    assert Path(kept_binary).is_file() and "recording_binary" in kept_binary


def test_sorter_crash_reports_the_log_tail(monkeypatch, tmp_path):
    def run_sorter(name, si_recording, folder, **kwargs):
        folder = Path(folder)
        (folder / "sorter_output").mkdir(parents=True)
        (folder / "spikeinterface_log.json").write_text(json.dumps(
            {"error": True, "error_trace": ["Traceback (most recent call last):", "  line 1",
                                            "ValueError: too few spikes to cluster"]}))
        (folder / "sorter_output" / "kilosort4.log").write_text("step A\nstep B\nlast words of the sorter\n")
        raise RuntimeError("Spike sorting error trace:\n...\nSpike sorting failed.")

    _fake_sorter(monkeypatch, run_sorter)
    with pytest.raises(SorterFailed) as failure:
        baselines.run_baseline("kilosort4", _recording(), tmp_path / "out", span=(1000, 3000))
    text = str(failure.value)
    assert "kilosort4 fake-1 failed on samples [1000, 3000)" in text
    assert "ValueError: too few spikes to cluster" in text and "last words of the sorter" in text


def test_run_baseline_rejects_a_span_outside_the_recording(monkeypatch, tmp_path):
    _fake_sorter(monkeypatch, lambda *a, **k: pytest.fail("must not run"))
    with pytest.raises(ValueError, match=r"span \[3000, 5000\) does not lie within"):
        baselines.run_baseline("tridesclous2", _recording(num_samples=4000), tmp_path / "o", span=(3000, 5000))


# ----------------------------------------------------------------------------------------------
# Real sorters (`make test-baselines`)


@pytest.fixture(scope="module")
def baseline_stack():
    """Fail (not skip) with the fix when the optional stack is missing."""
    missing = {name: baselines.missing_modules(name) for name in baselines.SORTERS}
    missing = {name: mods for name, mods in missing.items() if mods}
    if missing:
        pytest.fail(
            f"the baseline sorters need the optional stack; missing: {missing}. "
            f"Run `{baselines.INSTALL_TARGET}` (requirements-baselines.txt), then `make test-baselines`.",
            pytrace=False,
        )
    for name in baselines.SORTERS:
        baselines.require_installed(name)


@pytest.fixture(scope="module")
def small_recording():
    """32 sites, 8 s: the smallest recording on which all three sorters run (in memory, so
    run_baseline also exercises its binary copy)."""
    from data_gen import SynthesisConfig, synthesize
    from data_gen.config import ProbeConfig

    return synthesize(SynthesisConfig(duration_s=8.0, seed=0, probe=ProbeConfig(n_channels=32, first_channel=100)))


def _near_true_spikes(sorting, truth, span, tolerance=12):
    """Fraction of found spikes within `tolerance` samples of a true spike (any unit)."""
    true = truth.in_span(*span).samples
    found = sorting.samples
    idx = np.clip(np.searchsorted(true, found), 1, true.size - 1)
    gap = np.minimum(np.abs(found - true[idx - 1]), np.abs(found - true[idx]))
    return float(np.mean(gap <= tolerance))


@pytest.mark.baselines
@pytest.mark.parametrize("name", baselines.SORTERS)
def test_sorter_runs_on_a_span_through_the_library(name, baseline_stack, small_recording, tmp_path):
    recording, truth = small_recording
    span = (recording.num_samples // 2, recording.num_samples)
    result = baselines.run_baseline(name, recording, tmp_path / name, span=span)
    assert result.sorter == name and result.version == baselines.sorter_version(name)
    assert result.sorting.num_spikes > 50 and result.num_units_found >= 2
    assert result.sorting.samples.min() >= span[0] and result.sorting.samples.max() < span[1]
    # Absolute samples: the spikes found sit on true spikes (a wrong offset would put them anywhere).
    assert _near_true_spikes(result.sorting, truth, span) > 0.8
    assert result.wall_seconds >= (result.sorter_seconds or 0.0) > 0
    assert (tmp_path / name / "sorter" / "spikeinterface_log.json").is_file()
    scores = evaluate(result.sorting, truth, identities="unknown", span=span)
    assert scores.tp_total > 0
    if name == "kilosort4":
        assert result.params["torch_device"] == "cpu"


@pytest.mark.baselines
def test_entry_point_compares_sorters_and_esort(baseline_stack, tmp_path):
    run = tmp_path / "run"
    result = _run(
        "data@target.data=tiny", "target.data.duration_s=8.0", "target.data.probe.n_channels=32",
        "data@source.data=tiny", "model=small", "train@pretrain.train=tiny", "train@finetune.train=tiny",
        "esort.ks=[2,4]", "span=full", "logger=disabled",
        f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}", timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "ok"
    spans = results["spans"]
    assert spans["span"] == "full" and spans["sorted_span"] == [0, 8 * 32000] and spans["eval_span"] == [128000, 256000]
    for name in baselines.SORTERS:
        metrics = results["sorters"][name]
        assert metrics["status"] == "ok", metrics.get("error")
        for key in ("accuracy_pooled", "accuracy_mean", "accuracy_median", "precision_pooled", "recall_pooled", "well_detected",
                    "n_units", "sort_seconds", "num_units_found", "sorter_version"):
            assert metrics[key] is not None, (name, key)
        assert metrics["sorted_duration_s"] == pytest.approx(8.0)
        assert (run / "sorters" / name / "sorting.npz").is_file()
        assert results["speed_ratio"][name] > 0
    for k in (2, 4):
        for arm in ("transfer", "scratch"):
            assert 0.0 <= results["esort"][f"k{k}"][arm]["accuracy_pooled"] <= 1.0
            assert (run / f"k{k}" / arm / "sorting.npz").is_file()
    assert len(results["rows"]) == 3 + 4
    reach = results["k_to_reach"]["kilosort4"]
    assert reach["level"] == results["sorters"]["kilosort4"]["accuracy_pooled"]
    assert reach["transfer"]["status"] in ("interpolated", "exact", "first", "never")
    assert (run / "comparison.csv").is_file() and (run / "comparison.png").stat().st_size > 10_000
    assert "kilosort4" in results["table"] and "transfer K=2" in result.stdout
    # Scored on the held-out span only, with the evaluator's tolerance.
    assert results["sorters"]["kilosort4"]["tolerance_ms"] == results["config"]["evaluation"]["tolerance_ms"]
    assert not math.isnan(results["sorters"]["tridesclous2"]["accuracy_pooled"])


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_file_composes_with_the_baselines_config(experiment):
    from experiments._plans import ESortArms, read_plan

    cfg = _compose("baselines", f"experiment={experiment}", "logger=disabled")
    read_plan(BaselinesConfig, cfg)
    from_dict(ESortArms, OmegaConf.to_container(cfg.esort, resolve=True), "esort")
    from_dict(WindowConfig, OmegaConf.to_container(cfg.finetune.windows, resolve=True), "finetune.windows")


def test_a_sorter_that_may_cache_its_traces_on_a_nearly_full_disk_is_warned_about(monkeypatch, tmp_path):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(baselines.shutil, "disk_usage", lambda path: usage(100e9, 80e9, 20e9))
    ten_minutes = 600 * 32000
    message = baselines.disk_warning("tridesclous2", 384, ten_minutes, tmp_path)
    assert message and "29.5 GB as float32" in message and "20.0 GB free" in message
    assert baselines.disk_warning("tridesclous2", 64, 60 * 32000, tmp_path) is None  # 0.5 GB fits
    assert baselines.disk_warning("kilosort4", 384, ten_minutes, tmp_path) is None  # not a caching sorter
