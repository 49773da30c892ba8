"""E-Sort on real recordings, trained from another sorter's output: preprocessing, acquisition
formats, Phy/Kilosort labels (reading, clear errors), the quality filter, run_esort, the Phy
output and experiments/sort_real.py end to end — all on tiny data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import probeinterface
import pytest

from esort_jax import ArrayTraces, Recording, Sorting
from esort_jax.config import ConfigError
from esort_jax.evaluate import evaluate
from esort_jax.io import (
    BinaryOptions,
    RecordingFormatError,
    RecordingSource,
    load_recording,
    to_spikeinterface_recording,
    to_spikeinterface_sorting,
)
from esort_jax.realdata.labeller import load_labels
from esort_jax.io.phy import PhyFormatError, read_phy_folder, template_similarity, write_phy_folder
from esort_jax.realdata.labeller import LabelFitError, SorterLabels, check_labels_fit, make_unit_table
from esort_jax.realdata.preprocess import PreprocessConfig, preprocess, preprocessed_recording
from esort_jax.realdata.quality import QualityFilter, isi_violations, select_units
from esort_jax.report.tables import evaluation_table
from esort_jax.train import TrainConfig
from tests._tiny import FS, TINY_MODEL, fast_compile, tiny_recording  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parent.parent
JOB = dict(n_jobs=1, progress_bar=False)
pytestmark = pytest.mark.filterwarnings(
    "ignore:The extractor is not serializable", "ignore:Empty units have been removed"
)


# ----------------------------------------------------------------------------------------------
# preprocessing and formats


def test_preprocessing_keeps_shape_removes_offsets_and_references_channels():
    recording, _ = tiny_recording(num_channels=8, duration_s=0.5)
    offset = Recording(ArrayTraces(recording.read() + 300.0), FS, recording.channel_positions)
    si_recording = to_spikeinterface_recording(offset)
    processed = preprocessed_recording(si_recording, PreprocessConfig())
    assert (processed.num_samples, processed.num_channels) == (recording.num_samples, 8)
    assert processed.metadata["preprocess"] == ["bandpass_filter 300-6000 Hz", "common_reference global median"]
    traces = processed.read(2000, 14000)
    assert traces.dtype == np.float32 and traces.shape == (12000, 8)
    assert abs(float(traces.mean())) < 1.0  # the 300 µV offset is gone (band-pass)
    np.testing.assert_allclose(np.median(traces, axis=1), 0.0, atol=1e-4)  # global median reference
    np.testing.assert_array_equal(processed.channel_positions, recording.channel_positions)
    # switched off: the traces pass through unchanged
    untouched = preprocessed_recording(si_recording, PreprocessConfig(enabled=False))
    np.testing.assert_array_equal(untouched.read(0, 500), offset.read(0, 500))
    with pytest.raises(ConfigError, match=r"preprocess\.freq_max_hz: must be below the Nyquist frequency 16000 Hz"):
        preprocess(si_recording, PreprocessConfig(freq_max_hz=16000.0))
    with pytest.raises(ConfigError, match=r"preprocess\.phase_shift: 'on' needs the channel property 'inter_sample_shift'"):
        preprocess(si_recording, PreprocessConfig(phase_shift="on"))
    with pytest.raises(ConfigError, match=r"preprocess\.common_reference: must be 'global', 'local' or 'none'"):
        PreprocessConfig(common_reference="car").validate()


def test_raw_binary_with_probe_file_and_spikeinterface_folder(tmp_path):
    recording, _ = tiny_recording(num_channels=8, duration_s=0.2)
    raw = np.round(recording.read() / 0.5).astype(np.int16)
    raw.tofile(tmp_path / "rec.dat")
    probe = probeinterface.Probe(ndim=2, si_units="um")
    probe.set_contacts(recording.channel_positions + [5.0, 0.0], shapes="circle", shape_params={"radius": 6})
    probeinterface.write_probeinterface(tmp_path / "probe.json", probe)
    options = BinaryOptions(sampling_frequency=FS, num_channels=8, dtype="int16", probe=str(tmp_path / "probe.json"),
                            gain_to_uv=0.5)
    loaded, nothing = load_recording(tmp_path / "rec.dat", format="binary", binary=options)
    assert nothing is None and loaded.sampling_frequency == FS
    np.testing.assert_allclose(loaded.read(), raw.astype(np.float32) * 0.5)
    np.testing.assert_allclose(loaded.channel_positions, recording.channel_positions + [5.0, 0.0])
    with pytest.raises(RecordingFormatError, match=r"not a whole number of frames of 7 channels"):
        load_recording(tmp_path / "rec.dat", format="binary", binary=BinaryOptions(sampling_frequency=FS, num_channels=7))
    with pytest.raises(ConfigError, match=r"recording\.binary\.sampling_frequency: required"):
        RecordingSource(path=str(tmp_path / "rec.dat"), format="binary").validate()
    with pytest.raises(RecordingFormatError, match="recording.binary.probe: .* describes 8 contacts but the recording has 4 channels"):
        load_recording(tmp_path / "rec.dat", format="binary",
                       binary=BinaryOptions(sampling_frequency=FS, num_channels=4, probe=str(tmp_path / "probe.json")))
    # a SpikeInterface-saved folder opens as a lazy SpikeInterface recording (auto-detected)
    to_spikeinterface_recording(recording).save(folder=tmp_path / "si", **JOB)
    si_recording, labels = RecordingSource(path=str(tmp_path / "si")).open()
    assert labels is None
    np.testing.assert_array_equal(si_recording.get_traces(return_in_uV=True), recording.read())


# ----------------------------------------------------------------------------------------------
# Phy / Kilosort labels

C_RECORDING = 8


def _write_phy(folder: Path, *, sample_rate=FS, channel_map=None, num_samples=48000):
    """A Kilosort-like folder: 4 templates on 6 template channels mapped to recording channels,
    clusters 0-3 (= templates) and 7 (a Phy merge of templates 1 and 2, mostly 2), and cluster
    9 which no cluster table lists. Returns the expected {cluster: samples}."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    trains = {c: np.sort(rng.choice(np.arange(100, num_samples - 100), size=n, replace=False))
              for c, n in [(0, 50), (1, 40), (2, 30), (3, 25), (7, 20), (9, 5)]}
    times, clusters, templates_of = [], [], []
    for c, train in trains.items():
        times.append(train)
        clusters.append(np.full(train.size, c))
        t = np.full(train.size, c if c < 4 else 2)
        if c == 7:
            t[:5] = 1  # merged: 15 spikes from template 2, 5 from template 1
        if c == 9:
            t[:] = 0
        templates_of.append(t)
    times = np.concatenate(times)
    order = np.argsort(times, kind="stable")
    np.save(folder / "spike_times.npy", times[order].astype(np.uint64)[:, None])
    np.save(folder / "spike_clusters.npy", np.concatenate(clusters)[order].astype(np.int32))
    np.save(folder / "spike_templates.npy", np.concatenate(templates_of)[order].astype(np.uint32)[:, None])
    templates = np.zeros((4, 20, 6), np.float32)
    for t in range(4):
        templates[t, 8, t + 1] = -(t + 2.0)  # template t peaks on template channel t + 1 ...
        templates[t, 12, t + 1] = 1.0  # ... with peak-to-peak t + 3
    np.save(folder / "templates.npy", templates)
    np.save(folder / "channel_map.npy", np.asarray(channel_map if channel_map is not None else [7, 6, 5, 4, 3, 2],
                                                   np.int32))
    (folder / "params.py").write_text(
        f"dat_path = 'recording.dat'\nn_channels_dat = {C_RECORDING}\ndtype = 'int16'\noffset = 0\n"
        f"sample_rate = {sample_rate}\nhp_filtered = False\n"
    )
    (folder / "cluster_group.tsv").write_text("cluster_id\tgroup\n0\tgood\n1\tmua\n2\tnoise\n3\tunsorted\n7\tgood\n")
    (folder / "cluster_KSLabel.tsv").write_text("cluster_id\tKSLabel\n0\tmua\n1\tgood\n2\tgood\n3\tgood\n7\tmua\n")
    return trains


def _recording(num_samples=48000, channels=C_RECORDING, fs=FS):
    positions = np.stack([np.zeros(channels), 20.0 * np.arange(channels)], 1)
    return Recording(ArrayTraces(np.zeros((num_samples, channels), np.float32)), fs, positions)


def test_phy_folder_reads_spikes_labels_and_template_columns(tmp_path):
    trains = _write_phy(tmp_path / "ks")
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
    check_labels_fit(labels, _recording())  # fits: no error
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
    # a sampling rate other than the recording's: both values and params.py: sample_rate
    _write_phy(tmp_path / "rate", sample_rate=30000.0)
    with pytest.raises(LabelFitError, match=r"params\.py: sample_rate is 30000 Hz but the recording is sampled at 32000 Hz"):
        check_labels_fit(load_labels(tmp_path / "rate"), _recording())
    # spike times beyond the recording: the file, the first offending spike, its unit, the length
    trains = _write_phy(tmp_path / "long")
    last = max(int(t.max()) for c, t in trains.items() if c != 9)
    unit = [c for c, t in trains.items() if c != 9 and t.max() == last][0]
    with pytest.raises(LabelFitError) as caught:
        check_labels_fit(load_labels(tmp_path / "long"), _recording(num_samples=last))
    message = str(caught.value)
    assert "spike_times.npy: spike time(s) outside the recording" in message
    assert f"(unit {unit}), is at sample {last} but the recording has {last} samples" in message
    # templates / channel_map referring to channels the recording does not have
    _write_phy(tmp_path / "chan", channel_map=[0, 1, 2, 3, 4, 11])
    with pytest.raises(LabelFitError, match=r"channel_map\.npy: refers to 12 channels \(highest index 11\) but the "
                                            r"recording has 8 channels"):
        check_labels_fit(load_labels(tmp_path / "chan"), _recording())
    # malformed folders
    _write_phy(tmp_path / "lengths")
    np.save(tmp_path / "lengths" / "spike_clusters.npy", np.zeros(3, np.int32))
    with pytest.raises(PhyFormatError, match=r"spike_clusters\.npy: has 3 entries but spike_times\.npy has 170"):
        load_labels(tmp_path / "lengths")
    _write_phy(tmp_path / "no_rate")
    (tmp_path / "no_rate" / "params.py").write_text("n_channels_dat = 8\n")
    with pytest.raises(PhyFormatError, match=r"params\.py: sample_rate must be a positive number; got None "
                                             r"\(keys found: n_channels_dat\)"):
        load_labels(tmp_path / "no_rate")
    _write_phy(tmp_path / "short_map", channel_map=[0, 1, 2])
    with pytest.raises(PhyFormatError, match=r"templates\.npy: refers to 6 channels but channel_map\.npy lists 3"):
        load_labels(tmp_path / "short_map")


def test_quality_filter_keeps_and_drops_the_right_units():
    fs, span = FS, (0, 32000)  # training span: the first second
    regular = np.arange(100, 32000, 800)  # 40 spikes, ISIs 25 ms
    trains = {
        "a": regular,                                            # good, plenty
        "b": regular + 7,                                        # mua
        "c": regular + 11,                                       # noise
        "d": np.r_[regular[:5], np.arange(40000, 60000, 500)],   # good, but 5 spikes in the span
        "e": np.sort(np.r_[regular, regular + 16]),              # good, 40 ISIs of 0.5 ms
        "f": np.arange(50000, 60000, 200),                       # unsorted, no spike in the span
    }
    sorting = Sorting.from_unit_dict(trains, fs)
    table, _ = make_unit_table(sorting, labels=np.array(["good", "mua", "noise", "good", "good", "unsorted"], object))
    labels = SorterLabels(sorting, table)
    default = select_units(labels, span, QualityFilter(min_spikes=20))
    assert default.kept_ids == ["a", "e"] and default.labels_kept == ("good",)
    reasons = {row["unit_id"]: row["reasons"] for row in default.dropped}
    assert reasons["b"] == ["label: 'mua' is not in ['good']"]
    assert reasons["d"] == ["spikes: 5 in the training span < min_spikes 20"]
    assert default.report()["dropped_by_reason"] == {"label": 3, "spikes": 2}
    assert default.sorting.unit_ids.tolist() == ["a", "e"]
    assert default.sorting.num_spikes == regular.size * 3  # kept units, all their spikes
    strict = select_units(labels, span, QualityFilter(min_spikes=20, max_isi_violation_ratio=0.5))
    rows = {row["unit_id"]: row for row in strict.rows}
    assert strict.kept_ids == ["a"] and rows["a"]["isi_violation_ratio"] == 0.0
    assert rows["e"]["reasons"] == ["isi: violation ratio 2.08 > max_isi_violation_ratio 0.5"]
    assert "isi: no spikes in the training span to compute it" in rows["f"]["reasons"]
    mua_too = select_units(labels, span, QualityFilter(labels=("good", "mua"), min_spikes=20, min_rate_hz=30.0))
    assert mua_too.kept_ids == ["a", "b", "e"]
    assert select_units(labels, span, QualityFilter(min_rate_hz=45.0)).kept_ids == ["e"]
    unlabelled = SorterLabels(sorting, make_unit_table(sorting)[0])
    assert not unlabelled.has_labels
    assert select_units(unlabelled, span, QualityFilter(min_spikes=20)).kept_ids == ["a", "b", "c", "e"]
    with pytest.raises(ConfigError, match=r"labels\.filter\.labels: unknown label\(s\) \['great'\]"):
        QualityFilter(labels=("great",)).validate()
    # the ISI ratio is SpikeInterface's
    from spikeinterface.metrics.quality.misc_metrics import isi_violations as si_isi_violations

    ratios, counts = isi_violations(sorting, span)
    for i in range(5):  # the units with spikes in the span
        train = sorting.in_span(*span).unit_samples(i) / fs
        expected_ratio, _, expected_count = si_isi_violations([train], 1.0)
        assert counts[i] == expected_count
        np.testing.assert_allclose(ratios[i], expected_ratio)
    assert counts[4] == 40


# ----------------------------------------------------------------------------------------------
# run_esort, outputs


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


# ----------------------------------------------------------------------------------------------
# experiments/sort_real.py


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
