"""experiments/sort_real.py end to end on tiny data: outputs, scores, clear errors before any work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esort_jax.io import (
    to_spikeinterface_recording,
    to_spikeinterface_sorting,
)
from esort_jax.io.phy import write_phy_folder
from esort_jax.io.spikeinterface import SAVE_JOB_KWARGS
from tests._tiny import fast_compile, tiny_recording  # noqa: F401  (fixture)


REPO = Path(__file__).resolve().parent.parent
JOB = SAVE_JOB_KWARGS
pytestmark = pytest.mark.filterwarnings(
    "ignore:The extractor is not serializable", "ignore:Empty units have been removed"
)


def _run(*overrides, timeout=600, script="sort_real.py"):
    env = {**os.environ, "WANDB_MODE": "disabled", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    return subprocess.run([sys.executable, str(REPO / "experiments" / script), *overrides],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def test_sort_real_end_to_end(tmp_path):
    recording, truth = tiny_recording(num_channels=8, num_units=3, duration_s=3.0, amplitude=10.0, seed=5)
    to_spikeinterface_recording(recording).save(folder=tmp_path / "rec_si", **JOB)
    to_spikeinterface_sorting(truth).save(folder=tmp_path / "truth_si")
    # labels as a sorter's Phy folder inside a run_sorter-like folder with its log; unit 2 marked noise
    write_phy_folder(truth, recording, tmp_path / "ks" / "sorter_output")
    (tmp_path / "ks" / "sorter_output" / "cluster_group.tsv").write_text("cluster_id\tgroup\n0\tgood\n1\tgood\n2\tnoise\n")
    (tmp_path / "ks" / "spikeinterface_log.json").write_text(json.dumps({"sorter_name": "fakesort", "run_time": 12.0}))
    common = ["model=small", "train=tiny", "train.epochs=8", "train@pretrain.train=tiny", "data@source.data=tiny",
              "logger=disabled", f"cache_dir={tmp_path / 'cache'}", "train_seconds=1.5",
              f"recording.path={tmp_path / 'rec_si'}"]
    result = _run(*common, f"labels.path={tmp_path / 'ks' / 'sorter_output'}", f"truth.path={tmp_path / 'truth_si'}",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "ok" and results["init"] == "transfer"
    assert results["pretrain"]["cache_hit"] is False and results["transfer_report"]["init"] == "transfer"
    # every labelled spike of the span (the labeller's output is complete there) and the threshold's
    assert results["labels_used_spikes"] > 0 and results["labelled_seconds"] > 0
    assert results["threshold_labels"] > 0 and results["train_steps"] == results["training"]["steps"]
    assert results["recording"]["preprocess"] == ["bandpass_filter 300-6000 Hz", "common_reference global median"]
    units = results["units"]
    assert units["kept_unit_ids"] == [0, 1] and units["dropped"] == [
        {"unit_id": 2, "reasons": ["label: 'noise' is not in ['good']"]}]
    agreement = results["agreement"]
    assert agreement["n_units"] == 2 and agreement["accuracy_pooled"] > 0.7, agreement
    assert len(agreement["per_unit"]["accuracy"]) == 2
    timing = results["timing"]
    assert timing["rest_duration_s"] == 1.5 and timing["sorter_seconds"] == 12.0
    expected = (12.0 / 3.0) / (timing["sort_rest_seconds"] / 1.5)
    assert timing["speed_ratio"] == pytest.approx(expected)
    truth_scores = results["ground_truth"]
    assert truth_scores["labeller_all_units"]["accuracy_pooled"] == 1.0  # the labels are the truth
    assert truth_scores["esort"]["identities"] == "unknown" and truth_scores["esort"]["well_detected"] >= 1
    assert "agreement with labels" in result.stdout and "fakesort took 12.0 s" in result.stdout
    import spikeinterface
    import spikeinterface.extractors as se

    sorting = spikeinterface.load(tmp_path / "run" / "sorting")
    assert sorting.unit_ids.tolist() == [0, 1] and sorting.to_spike_vector().size == results["num_spikes"]
    assert se.read_phy(tmp_path / "run" / "phy").to_spike_vector().size == results["num_spikes"]
    assert (tmp_path / "run" / "checkpoint" / "sorting_defaults.json").is_file()

    # sort.py with that checkpoint on the raw recording preprocesses it as training did (the
    # settings are in the checkpoint) and finds the same spikes; 'none' feeds the raw traces
    for mode in ("checkpoint", "none"):
        again = _run(f"recording.path={tmp_path / 'rec_si'}", f"checkpoint={tmp_path / 'run' / 'checkpoint'}",
                     f"preprocess={mode}", "logger=disabled", f"hydra.run.dir={tmp_path / ('sort_' + mode)}",
                     script="sort.py")
        assert again.returncode == 0, again.stderr[-3000:]
    resorted = json.loads((tmp_path / "sort_checkpoint" / "results.json").read_text())
    assert resorted["recording"]["preprocess"] == results["recording"]["preprocess"]
    assert resorted["threshold"] == results["threshold"] and resorted["num_spikes"] == results["num_spikes"]
    raw = json.loads((tmp_path / "sort_none" / "results.json").read_text())
    assert raw["recording"]["preprocess"] == [] and raw["num_spikes"] != results["num_spikes"]

    # labels made at another sampling rate: a clear error, before any training
    (tmp_path / "ks" / "sorter_output" / "params.py").write_text(
        (tmp_path / "ks" / "sorter_output" / "params.py").read_text().replace("sample_rate = 32000.0", "sample_rate = 30000.0"))
    bad = _run(*common, "init=scratch", f"labels.path={tmp_path / 'ks' / 'sorter_output'}",
               f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode != 0
    assert "params.py: sample_rate is 30000 Hz but the recording is sampled at 32000 Hz" in bad.stderr
    failed = json.loads((tmp_path / "bad" / "results.json").read_text())
    assert failed["status"] == "failed" and "sample_rate" in failed["error"] and "pretrain" not in failed


# ----------------------------------------------------------------------------------------------
# truth.path: anything carrying ground truth, checked before any training (issue 14 item 8)


def _labelled_recording(tmp_path):
    """A tiny recording as a SpikeInterface folder and as a MEArec file (with its ground truth),
    and that truth as a .npz sorting (the labels)."""
    from esort_jax.io import write_mearec
    from esort_jax.io.folder import write_sorting_npz

    recording, truth = tiny_recording(num_channels=8, num_units=3, duration_s=3.0, amplitude=10.0, seed=5)
    to_spikeinterface_recording(recording).save(folder=tmp_path / "rec_si", **JOB)
    write_mearec(tmp_path / "rec.h5", recording, truth)
    write_sorting_npz(tmp_path / "labels.npz", truth)
    return ["model=small", "train=tiny", "logger=disabled", "init=scratch", "export.phy.enabled=false",
            "train_seconds=1.5", f"cache_dir={tmp_path / 'cache'}", f"recording.path={tmp_path / 'rec_si'}",
            f"labels.path={tmp_path / 'labels.npz'}"]


def test_truth_from_a_mearec_file_is_accepted_and_scored(tmp_path):
    common = _labelled_recording(tmp_path)
    result = _run(*common, f"truth.path={tmp_path / 'rec.h5'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "ok"
    scores = results["ground_truth"]
    assert scores["path"] == str(tmp_path / "rec.h5")
    assert scores["labeller_all_units"]["accuracy_pooled"] == 1.0  # the labels are the file's truth
    assert scores["esort"]["n_units"] == 3 and scores["unit_snr"]["unit_ids"] == [0, 1, 2]


def test_truth_that_is_missing_or_does_not_fit_is_refused_before_any_training(tmp_path):
    """A missing truth.path is refused as the config is read; a truth that does not load, or that
    does not fit the recording, as the labels are read: before pretraining (init=transfer here)
    or fine-tuning, so neither train/ nor any cache entry exists."""
    common = [o for o in _labelled_recording(tmp_path) if o != "init=scratch"]
    from esort_jax import GroundTruth
    from esort_jax.io.folder import write_sorting_npz

    write_sorting_npz(tmp_path / "truth_30k.npz", GroundTruth(samples=[10, 20], unit_indices=[0, 1], unit_ids=[0, 1],
                                                              sampling_frequency=30000.0))
    (tmp_path / "notes.txt").write_text("not a sorting\n")
    cases = {
        "missing": (tmp_path / "nope.h5", f"truth.path: {tmp_path / 'nope.h5'} does not exist"),
        "rate": (tmp_path / "truth_30k.npz", "sampling_frequency is 30000 Hz but the recording is sampled at 32000 Hz"),
        "text": (tmp_path / "notes.txt", f"truth.path: ground truth: {tmp_path / 'notes.txt'}: not a recognised recording"),
    }
    for name, (path, message) in cases.items():
        run = tmp_path / name
        result = _run(*common, f"truth.path={path}", f"hydra.run.dir={run}")
        assert result.returncode != 0
        assert message in result.stderr, (name, result.stderr[-2000:])
        failed = json.loads((run / "results.json").read_text())
        assert failed["status"] == "failed" and message in failed["error"] and "pretrain" not in failed
        assert not (run / "train").exists() and not (run / "checkpoint").exists()
    assert not (tmp_path / "cache").exists()
