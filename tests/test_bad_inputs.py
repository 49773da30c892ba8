"""Issue 14 at the entry points: nothing wrong ever reports ok. Each case runs an entry point the
way a user would (a subprocess, the tiny configs), checks that the message names the problem and
that nothing was written or corrupted. The library's own refusals are tested beside their modules
(docs/bad_inputs.md lists them all)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


def _run(script, *overrides, timeout=120):
    env = {**os.environ, "WANDB_MODE": "disabled", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    return subprocess.run([sys.executable, str(REPO / "experiments" / script), *overrides],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def _snapshot(folder: Path) -> dict:
    """Every file under `folder` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------
# Item 1: an unknown experiment= stops at once, naming it and listing the known ones


@pytest.mark.parametrize("script", ["transfer.py", "label_efficiency.py", "baselines.py"])
def test_unknown_experiment_is_an_error_listing_the_known_ones(tmp_path, script):
    result = _run(script, "experiment=nosuch", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert "Could not find 'experiment/nosuch'" in result.stderr, result.stderr[-2000:]
    listed = result.stderr.split("Available options in 'experiment':", 1)[1]
    assert all(f"\t{name}\n" in listed for name in EXPERIMENTS), listed
    # stopped while composing the config: no run folder, nothing built in the cache
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


# ----------------------------------------------------------------------------------------------
# Item 5: a run folder is never silently overwritten


def _finished_run(folder: Path, experiment: str) -> dict:
    """A run folder as another entry point leaves it: results.json, Hydra's .hydra/ and log."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"experiment": experiment, "status": "ok", "transfer": {}}))
    (folder / ".hydra" / "config.yaml").write_text("seed: 7\n")
    (folder / ".hydra" / "overrides.yaml").write_text("- seed=7\n")
    (folder / f"{experiment}.log").write_text("epoch 0\n")
    return _snapshot(folder)


def test_a_folder_holding_another_entry_points_results_is_refused_and_left_as_it_was(tmp_path):
    """sort.py pointed at a finetune run: refused before Hydra or the run write anything there
    (results.json, the run's .hydra/ record of its config and its log stay byte-identical)."""
    run = tmp_path / "finetune_run"
    before = _finished_run(run, "finetune")
    result = _run("sort.py", f"recording.path={tmp_path / 'rec'}", f"checkpoint={run / 'checkpoint'}",
                  "logger=disabled", f"hydra.run.dir={run}")
    assert result.returncode != 0
    assert f"{run} holds the results of a 'finetune' run (results.json); sort will not overwrite them" in result.stderr
    assert "choose another run folder (hydra.run.dir=...)" in result.stderr
    assert _snapshot(run) == before


def test_a_finished_run_is_refused_unless_overwrite_is_true(tmp_path):
    run = tmp_path / "run"
    tiny = ["data=tiny", "data.duration_s=0.5", "logger=disabled", f"hydra.run.dir={run}"]
    first = _run("synthesize.py", *tiny)
    assert first.returncode == 0, first.stderr[-2000:]
    before = _snapshot(run)
    again = _run("synthesize.py", *tiny, "seed=1")
    assert again.returncode != 0
    assert f"{run} holds a finished synthesize run (results.json, status ok)" in again.stderr
    assert "pass overwrite=true to replace it" in again.stderr
    assert _snapshot(run) == before
    replaced = _run("synthesize.py", *tiny, "seed=1", "overwrite=true")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "ok" and results["seed"] == 1 and results["config"]["overwrite"] is True
    assert (run / "recording" / "metadata.json").is_file()


# ----------------------------------------------------------------------------------------------
# Item 7: a config error while the run is being set up still writes results.json


def test_a_seed_that_is_not_an_integer_writes_a_failed_results_json(tmp_path):
    result = _run("synthesize.py", "data=tiny", "logger=disabled", "seed=abc", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "seed: must be an integer >= 0; got 'abc'" in result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed" and results["experiment"] == "synthesize"
    assert results["error"] == "ConfigError: seed: must be an integer >= 0; got 'abc'" and results["seed"] == "abc"
    assert not (tmp_path / "recording").exists()


@pytest.mark.parametrize("value, message", [
    ("${add:${seed},abc}", "data.seed: ${add:...} adds numbers; got [0, 'abc']"),
    ("${nosuch}", "data.seed: Interpolation key 'nosuch' not found"),
])
def test_an_interpolation_that_does_not_resolve_names_itself_and_the_key(tmp_path, value, message):
    """A resolver error (or a missing key) while the config is resolved: a ConfigError naming the
    key (not OmegaConf's error with its internals), and results.json with status failed."""
    result = _run("synthesize.py", "data=tiny", "logger=disabled", f"data.seed='{value}'", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert f"ConfigError: {message}" in result.stderr, result.stderr[-2000:]
    assert "InterpolationResolutionError" not in result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed" and results["error"] == f"ConfigError: {message}"
    assert results["config"]["data"]["seed"] == value  # the config as given, unresolved
    assert not (tmp_path / "recording").exists()


# ----------------------------------------------------------------------------------------------
# Cases beyond the issue (docs/bad_inputs.md, "Cases tried beyond the issue")


def _checkpoint(folder: Path, role: str | None = None) -> Path:
    """A tiny network that fits the tiny recording (16 channels, units 0-4)."""
    from esort_jax.checkpoint import make_metadata, save_checkpoint
    from esort_jax.train import init_model
    from tests._tiny import TINY_MODEL

    model = init_model(16, 5, TINY_MODEL, seed=0)
    return save_checkpoint(folder, model, make_metadata(model, unit_ids=list(range(5)),
                                                        extra={"role": role} if role else {}))


@pytest.mark.parametrize("script, role, what", [("sort.py", "pretrain", "a pretraining checkpoint"),
                                                 ("online.py", "backbone", "a pretrained backbone")])
def test_sorting_refuses_a_pretrained_checkpoint_before_any_work(tmp_path, script, role, what):
    """sort.py given a pretraining checkpoint (its units are the source recording's) used to sort
    the recording with them and score them by id against its truth: status ok, accuracy 0.002.
    Now refused from the checkpoint's metadata, before the model or the recording is loaded
    (online.py likewise, before it serves)."""
    checkpoint = _checkpoint(tmp_path / "pretrained", role=role)
    out = tmp_path / "sort"
    stop = ["max_seconds=1"] if script == "online.py" else []  # had it served, it would stop by itself
    result = _run(script, f"checkpoint={checkpoint}", "data@recording.data=tiny", "logger=disabled", *stop,
                  f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}")
    assert result.returncode != 0
    message = f"checkpoint: {checkpoint} is {what} (metadata.json extra.role={role!r})"
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "failed" and message in results["error"] and "fine-tune it" in results["error"]
    assert not (out / "sorting").exists() and not (tmp_path / "cache").exists()


def test_a_reversed_span_says_so(tmp_path):
    """sort.py span=[1, 0.5] was refused as 'outside the recording' (the wrong reason)."""
    from esort_jax.config import ConfigError, from_dict
    from experiments._plans import SortPlan

    checkpoint = str(_checkpoint(tmp_path / "checkpoint"))
    with pytest.raises(ConfigError, match=r"^span: must be \[start_s, stop_s\] with 0 <= start_s < stop_s; got \[1, 0.5\]"):
        from_dict(SortPlan, {"checkpoint": checkpoint, "span": [1, 0.5]}, "")
    with pytest.raises(ConfigError, match=r"^span: must be .*; got \[-1, 0.5\]"):
        from_dict(SortPlan, {"checkpoint": checkpoint, "span": [-1, 0.5]}, "")
    assert from_dict(SortPlan, {"checkpoint": checkpoint, "span": [0, 0.5]}, "").span == (0.0, 0.5)


@pytest.mark.parametrize("case, message", [
    ("empty folder", "not recognised: a folder containing [nothing]"),
    ("truncated npz", "not a readable .npz file (BadZipFile"),
    ("zero-byte npz", "not a readable .npz file (EOFError"),
    ("NaN spike times", "'samples' must be a 1-D array of sample indices >= 0; got shape (2,), dtype float64, min nan"),
    ("negative spike times", "'samples' must be a 1-D array of sample indices >= 0; got shape (2,), dtype int64, min -5"),
    ("unit index out of range", "not a valid sorting: ValueError: unit_indices must lie in [0, 2); got [0, 7]"),
    ("sampling rate 0", "'sampling_frequency' must be a number > 0 (Hz); got 0"),  # was a ZeroDivisionError
])
def test_labels_files_that_do_not_hold_a_sorting_are_refused_by_name(tmp_path, case, message):
    """Labels (sort_real's labels.path, load_labels) that are not a sorting: a RecordingFormatError
    naming the file and what is wrong, the file left as it was."""
    import numpy as np

    from esort_jax import GroundTruth
    from esort_jax.io.folder import RecordingFormatError, write_sorting_npz
    from esort_jax.realdata.labeller import load_labels

    path = tmp_path / "labels.npz"
    arrays = dict(samples=np.array([5, 10]), unit_indices=np.array([0, 1]), unit_ids=np.array([0, 1]),
                  sampling_frequency=32000.0)
    if case == "empty folder":
        path = tmp_path / "sorter_output"
        path.mkdir()
    elif case in ("truncated npz", "zero-byte npz"):
        write_sorting_npz(path, GroundTruth(samples=[5, 10], unit_indices=[0, 1], unit_ids=[0, 1],
                                            sampling_frequency=32000.0))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if case == "truncated npz" else b"")
    else:
        arrays.update({"NaN spike times": dict(samples=np.array([10.0, np.nan])),
                       "negative spike times": dict(samples=np.array([-5, 10])),
                       "unit index out of range": dict(unit_indices=np.array([0, 7])),
                       "sampling rate 0": dict(sampling_frequency=0.0)}[case])
        np.savez(path, **arrays)
    before = _snapshot(tmp_path)
    with pytest.raises(RecordingFormatError) as caught:
        load_labels(path)
    assert str(caught.value).startswith(str(path)) and message in str(caught.value), str(caught.value)
    assert _snapshot(tmp_path) == before
