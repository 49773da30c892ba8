"""esort_jax.realdata.workflow: run_esort trains on a labeller's first stretch and sorts the whole
recording; its outputs load back in SpikeInterface and Phy."""

import json
from pathlib import Path

import numpy as np
import pytest

from esort_jax.config import ConfigError
from esort_jax.evaluate import evaluate
from esort_jax.io import (
    to_spikeinterface_recording,
)
from esort_jax.io.spikeinterface import SAVE_JOB_KWARGS
from esort_jax.realdata.labeller import load_labels
from esort_jax.report.tables import evaluation_table
from esort_jax.train import TrainConfig
from tests._tiny import TINY_MODEL, fast_compile, tiny_recording  # noqa: F401  (fixture)


REPO = Path(__file__).resolve().parent.parent
JOB = SAVE_JOB_KWARGS
pytestmark = pytest.mark.filterwarnings(
    "ignore:The extractor is not serializable", "ignore:Empty units have been removed"
)


def test_run_esort_recovers_the_units_and_writes_loadable_outputs(tmp_path):
    import spikeinterface
    import spikeinterface.extractors as se

    from esort_jax import checkpoint as ckpt
    from esort_jax.infer import fold_batchnorm
    from esort_jax.sort import SORTING_DEFAULTS, sort_recording
    from esort_jax.realdata.workflow import run_esort

    recording, truth = tiny_recording(num_channels=8, num_units=3, duration_s=3.0, amplitude=10.0, seed=3)
    si_sorting = run_esort(
        to_spikeinterface_recording(recording), truth, train_seconds=1.5, model=TINY_MODEL,
        train=TrainConfig(epochs=6, batch_size=64, progress=False), seed=0, folder=tmp_path / "out",
    )
    ours = load_labels(si_sorting).sorting
    assert ours.unit_ids.tolist() == truth.unit_ids.tolist()
    rest = (48000, recording.num_samples - TINY_MODEL.window + 1 + TINY_MODEL.anchor)
    scored = evaluate(ours, truth, identities="known", span=rest)
    assert scored.accuracy_pooled > 0.8 and np.all(scored.accuracy > 0.5), evaluation_table(scored)
    assert ours.in_span(0, 48000).num_spikes > 0.8 * truth.in_span(0, 48000).num_spikes  # the training part too
    # two calls split at train_end give the one-pass spikes
    model, meta = ckpt.load_model(tmp_path / "out" / "checkpoint")
    model.eval()
    threshold = json.loads((tmp_path / "out" / "checkpoint" / SORTING_DEFAULTS).read_text())["threshold"]
    one_pass = sort_recording(fold_batchnorm(model), recording, meta.unit_ids, threshold=threshold).sorting
    np.testing.assert_array_equal(one_pass.samples, ours.samples)
    np.testing.assert_array_equal(one_pass.unit_indices, ours.unit_indices)
    # the SpikeInterface folder and the Phy folder load back with the same spikes
    vector = si_sorting.to_spike_vector()
    saved = spikeinterface.load(tmp_path / "out" / "sorting")
    np.testing.assert_array_equal(saved.to_spike_vector()["sample_index"], vector["sample_index"])
    assert saved.get_property("labeller_label").tolist() == ["unsorted"] * 3
    phy = se.read_phy(tmp_path / "out" / "phy")
    assert phy.unit_ids.tolist() == truth.unit_ids.tolist()
    for unit in truth.unit_ids.tolist():
        np.testing.assert_array_equal(phy.get_unit_spike_train(unit), si_sorting.get_unit_spike_train(unit))
    assert (tmp_path / "out" / "phy" / "amplitudes.npy").is_file()
    assert not (tmp_path / "out" / "phy" / "pc_features.npy").exists()
    summary = json.loads((tmp_path / "out" / "esort.json").read_text())
    assert summary["units"]["num_kept"] == 3 and summary["timing"]["sort_rest_seconds"] > 0
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        run_esort(recording, truth, train_seconds=1.5, folder=tmp_path / "out")
    with pytest.raises(ConfigError, match=r"train_seconds: must lie in \(0, 3\)"):
        run_esort(recording, truth, train_seconds=5.0)
