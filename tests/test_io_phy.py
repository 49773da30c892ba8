"""esort_jax.io.phy: Phy/Kilosort folders in (spikes, labels, template columns, clear errors)
and out (sorting folders, Phy export). Phy labels that do not fit a recording:
test_realdata_labeller.py."""

from pathlib import Path

import numpy as np
import pytest

from esort_jax.io.phy import PhyFormatError, read_phy_folder, template_similarity, write_phy_folder
from esort_jax.io.spikeinterface import SAVE_JOB_KWARGS
from esort_jax.realdata.labeller import check_labels_fit, load_labels
from tests._tiny import FS, fast_compile, tiny_recording  # noqa: F401  (fixture)
from tests._phy import blank_recording, write_phy

REPO = Path(__file__).resolve().parent.parent
JOB = SAVE_JOB_KWARGS
pytestmark = pytest.mark.filterwarnings(
    "ignore:The extractor is not serializable", "ignore:Empty units have been removed"
)


def test_phy_folder_reads_spikes_labels_and_template_columns(tmp_path):
    trains = write_phy(tmp_path / "ks")
    labels = load_labels(tmp_path / "ks", duration_s=1.5)
    assert labels.source["kind"] == "phy" and labels.sorting.sampling_frequency == FS
    ids = labels.unit_ids.tolist()
    assert ids == [0, 1, 2, 3, 7]  # cluster 9 is in no cluster table: read_phy drops it ...
    assert "1 cluster(s) of spike_clusters.npy are not listed" in labels.source["notes"][0]  # ... we say so
    for unit, train in trains.items():
        if unit != 9:
            np.testing.assert_array_equal(labels.sorting.unit_samples(ids.index(unit)), train)
    table = labels.unit_table
    # Phy's curation wins; 'unsorted' falls back to Kilosort's KSLabel
    assert table["label"].tolist() == ["good", "mua", "noise", "good", "good"]
    assert table["spike_count"].tolist() == [50, 40, 30, 25, 20]
    np.testing.assert_allclose(table["firing_rate_hz"], np.array([50, 40, 30, 25, 20]) / 1.5)
    # template t peaks on template column t + 1 -> recording channel channel_map[t + 1] = 6 - t;
    # cluster 7 is mostly template 2
    assert table["peak_channel"].tolist() == [6, 5, 4, 3, 4]
    np.testing.assert_allclose(table["template_peak_to_peak"], [3, 4, 5, 6, 5])
    assert labels.has_labels
    check_labels_fit(labels, blank_recording())  # fits: no error
    # sparse templates: column j of template t is channel_map[ind[t, j]] (Kilosort 4 names the file
    # templates_ind.npy, Phy template_ind.npy)
    np.save(tmp_path / "ks" / "templates_ind.npy", np.tile(np.arange(5, -1, -1), (4, 1)))
    assert load_labels(tmp_path / "ks").unit_table["peak_channel"].tolist() == [3, 4, 5, 6, 5]


def test_phy_errors_name_the_file_and_field(tmp_path):
    # missing files: named, with what was found
    (tmp_path / "partial").mkdir()
    np.save(tmp_path / "partial" / "spike_times.npy", np.arange(5, dtype=np.uint64))
    with pytest.raises(PhyFormatError, match=r"missing params\.py, spike_clusters\.npy \(or spike_templates\.npy\); "
                                             r"found \[spike_times\.npy\]"):
        load_labels(tmp_path / "partial")
    with pytest.raises(PhyFormatError, match=r"missing spike_times\.npy"):
        read_phy_folder(tmp_path)
    # malformed folders
    write_phy(tmp_path / "lengths")
    np.save(tmp_path / "lengths" / "spike_clusters.npy", np.zeros(3, np.int32))
    with pytest.raises(PhyFormatError, match=r"spike_clusters\.npy: has 3 entries but spike_times\.npy has 170"):
        load_labels(tmp_path / "lengths")
    write_phy(tmp_path / "no_rate")
    (tmp_path / "no_rate" / "params.py").write_text("n_channels_dat = 8\n")
    with pytest.raises(PhyFormatError, match=r"params\.py: sample_rate must be a positive number; got None "
                                             r"\(keys found: n_channels_dat\)"):
        load_labels(tmp_path / "no_rate")
    write_phy(tmp_path / "short_map", channel_map=[0, 1, 2])
    with pytest.raises(PhyFormatError, match=r"templates\.npy: refers to 6 channels but channel_map\.npy lists 3"):
        load_labels(tmp_path / "short_map")


def test_template_similarity_is_spikeinterfaces_cosine():
    from spikeinterface.postprocessing.template_similarity import _compute_similarity_matrix_numpy

    rng = np.random.default_rng(0)
    mask = rng.random((6, 7)) > 0.4
    mask[:, 0], mask[5], mask[5, 6], mask[:5, 6] = True, False, True, False  # unit 5 overlaps nobody
    templates = rng.standard_normal((6, 12, 7)) * mask[:, None, :]
    distances = _compute_similarity_matrix_numpy(templates, templates, 0, "cosine", mask, mask, support="union")
    np.testing.assert_allclose(template_similarity(templates), 1 - distances.min(axis=0), atol=1e-6)


def test_phy_export_copies_the_binary_with_a_relative_path(tmp_path):
    import spikeinterface.extractors as se

    from esort_jax.io.phy import PhyExportConfig

    recording, truth = tiny_recording(num_channels=8, num_units=3, duration_s=1.0)
    folder = write_phy_folder(truth, recording, tmp_path / "phy", PhyExportConfig(copy_binary=True))
    assert "dat_path = r'recording.dat'" in (folder / "params.py").read_text()  # relative: valid after the rename
    np.testing.assert_array_equal(np.fromfile(folder / "recording.dat", np.float32).reshape(-1, 8), recording.read())
    assert se.read_phy(folder).to_spike_vector().size == truth.num_spikes
    assert not list(tmp_path.glob(".phy.tmp-*"))  # the temporary folder became phy/
    with pytest.raises(FileExistsError, match="already exists"):
        write_phy_folder(truth, recording, tmp_path / "phy")


def test_phy_principal_components_without_scikit_learn_fail_before_any_work(tmp_path, monkeypatch):
    import importlib.util

    from esort_jax.io.phy import PhyExportConfig

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else find_spec(name, *a))
    recording, truth = tiny_recording(num_channels=8, num_units=3, duration_s=1.0)
    with pytest.raises(ModuleNotFoundError, match=r"compute_pc_features=true needs scikit-learn.*make baselines-venv"):
        write_phy_folder(truth, recording, tmp_path / "phy", PhyExportConfig(compute_pc_features=True))
    assert not (tmp_path / "phy").exists() and not list(tmp_path.iterdir())


@pytest.mark.baselines  # scikit-learn comes with requirements-baselines.txt


def test_phy_export_principal_components(tmp_path):
    import spikeinterface.extractors as se

    from esort_jax.io.phy import PhyExportConfig

    recording, truth = tiny_recording(num_channels=8, num_units=3, duration_s=1.0)
    folder = write_phy_folder(truth, recording, tmp_path / "phy", PhyExportConfig(compute_pc_features=True))
    assert np.load(folder / "pc_features.npy").shape[0] == truth.num_spikes
    assert se.read_phy(folder).to_spike_vector().size == truth.num_spikes
