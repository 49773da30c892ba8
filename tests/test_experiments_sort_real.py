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
from tests._tiny import fast_compile, tiny_recording  # noqa: F401  (fixture)


REPO = Path(__file__).resolve().parent.parent
JOB = dict(n_jobs=1, progress_bar=False)
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
