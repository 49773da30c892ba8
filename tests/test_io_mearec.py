"""MEArec .h5: our writer/reader round trip, and files laid out as MEArec itself writes them."""

import h5py
import numpy as np
import pytest

from esort_jax import ArrayTraces, Drift, GroundTruth, Recording, Sorting
from esort_jax.io import RecordingFormatError, read_mearec, write_mearec
from esort_jax.io.mearec import _samples_to_times
from tests._files import failing_after_first_read

FS = 32000.0
eq = np.testing.assert_array_equal


def _recording(num_samples=1500, num_channels=6, seed=0):
    rng = np.random.default_rng(seed)
    traces = (20 * rng.standard_normal((num_samples, num_channels))).astype(np.float32)
    channel = np.arange(num_channels)
    positions = np.stack([16.0 * (channel % 2), 20.0 * channel], axis=1)
    return Recording(ArrayTraces(traces), FS, positions, metadata={"seed": seed}), traces


def _truth(num_samples=1500, seed=1):
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, num_samples, 40)
    units = rng.integers(0, 3, 40)
    return GroundTruth(
        samples=samples, unit_indices=units, unit_ids=np.array([7, 3, 11]), sampling_frequency=FS,
        unit_table={
            "position_um": np.array([[1.0, 20.0, 15.0], [-3.0, 60.0, 30.0], [5.0, 90.0, 22.5]]),
            "cell_type": np.array(["exc", "inh", "exc"]),
            "snr": np.array([5.0, 8.5, 3.25]),
            "firing_rate_hz": np.array([4.0, 12.0, 6.5]),
            "peak_channel": np.array([1, 3, 4]),
            "peak_amplitude_uv": np.array([50.0, 85.0, 32.5]),
        },
        drift=Drift(
            samples=np.array([0, 700, 1499]),
            displacement_um=np.array([[0.0] * 3, [2.0] * 3, [5.0] * 3]),
        ),
        spike_amplitude_scales=rng.uniform(0.8, 1.2, 40),
    )


def test_round_trip_is_exact_and_lazy(tmp_path):
    import probeinterface
    recording, traces = _recording()
    probe = probeinterface.Probe(ndim=2, si_units="um")
    probe.set_contacts(recording.channel_positions, shapes="square", shape_params={"width": 12.0})
    recording = Recording(
        recording.traces, FS, recording.channel_positions, probe=probe, metadata={"seed": 0}
    )
    truth = _truth()
    write_mearec(tmp_path / "rec.h5", recording, truth, chunk_samples=400)
    loaded, loaded_truth = read_mearec(tmp_path / "rec.h5")
    try:
        assert isinstance(loaded.traces.array, h5py.Dataset)  # lazy: nothing read yet
        np.testing.assert_array_equal(loaded.read(), traces)
        np.testing.assert_array_equal(loaded.read(300, 777), traces[300:777])
        np.testing.assert_array_equal(loaded.channel_positions, recording.channel_positions)
        assert loaded.sampling_frequency == FS and loaded.metadata["seed"] == 0
        assert loaded.probe.contact_shapes.tolist() == ["square"] * 6
        assert [p["width"] for p in loaded.probe.contact_shape_params] == [12.0] * 6
        assert isinstance(loaded_truth, GroundTruth)
        np.testing.assert_array_equal(loaded_truth.samples, truth.samples)
        np.testing.assert_array_equal(loaded_truth.unit_indices, truth.unit_indices)
        np.testing.assert_array_equal(loaded_truth.unit_ids, truth.unit_ids)
        assert sorted(loaded_truth.unit_table) == sorted(truth.unit_table)
        for name, column in truth.unit_table.items():
            np.testing.assert_array_equal(loaded_truth.unit_table[name], column)
        eq(loaded_truth.drift.displacement_um, truth.drift.displacement_um)
        eq(loaded_truth.spike_amplitude_scales, truth.spike_amplitude_scales)
    finally:
        loaded.traces.close()


def test_written_file_uses_the_mearec_layout(tmp_path):
    """The standard datasets alone (what MEArec tools read) carry traces, geometry and spikes."""
    recording, traces = _recording()
    truth = _truth()
    write_mearec(tmp_path / "rec.h5", recording, truth)
    with h5py.File(tmp_path / "rec.h5", "r") as f:
        assert f.attrs["mearec_version"] == "1.11.0"  # MEArec's loader wants >= 1.5 (time-major)
        assert f["recordings"].shape == (1500, 6) and f["recordings"].attrs["gain_to_uV"] == 1.0
        np.testing.assert_array_equal(f["recordings"][()], traces)
        assert float(f["info/recordings/fs"][()]) == FS
        assert int(f["info/recordings/duration"][()] * FS) == 1500  # how neo counts samples
        np.testing.assert_array_equal(f["channel_positions"][:, 1:], recording.channel_positions)
        assert sorted(f["spiketrains"].keys(), key=int) == ["0", "1", "2"]
        for index in range(3):
            times = f[f"spiketrains/{index}/times"][()]
            # SpikeInterface's MEArec sorting extractor floors times * fs: must give our samples
            eq(np.floor(times * FS).astype(int), truth.unit_samples(index))
            ann = f[f"spiketrains/{index}/annotations"]
            assert ann["cell_type"][()].decode() == "EIE"[index]
            eq(ann["soma_position"][()][[1, 2, 0]], truth.unit_table["position_um"][index])
        assert f["info/electrodes/plane"][()] == b"yz"
    # without our esort_jax/ group the reader falls back on MEArec's own fields
    with h5py.File(tmp_path / "rec.h5", "r+") as f:
        del f["esort_jax"]
    _, plain = read_mearec(tmp_path / "rec.h5")
    np.testing.assert_array_equal(plain.unit_ids, [0, 1, 2])
    np.testing.assert_array_equal(plain.samples, truth.samples)
    np.testing.assert_array_equal(plain.unit_table["cell_type"], truth.unit_table["cell_type"])
    np.testing.assert_allclose(plain.unit_table["position_um"], truth.unit_table["position_um"])
    eq(plain.unit_table["firing_rate_hz"], truth.unit_table["firing_rate_hz"])


def test_times_written_floor_and_round_to_their_sample():
    samples = np.arange(0, 3_000_000, 37)
    for fs in (30000.0, 32000.0, 24414.0625, 29999.7):
        times = _samples_to_times(samples, fs)
        np.testing.assert_array_equal(np.floor(times * fs).astype(np.int64), samples)
        np.testing.assert_array_equal(np.rint(times * fs).astype(np.int64), samples)


def _write_native(path, *, channel_major=False, drifting=False):
    """A small file shaped like MEArec's save_recording_generator output (int16 with a gain)."""
    num_samples, num_channels, num_units, steps = 900, 4, 11, 5
    raw = np.arange(num_samples * num_channels).reshape(num_samples, num_channels)
    raw = (raw % 97 - 48).astype(np.int16)
    positions = np.zeros((num_channels, 3))
    positions[:, 1] = [0.0, 16.0, 0.0, 16.0]
    positions[:, 2] = [0.0, 0.0, 20.0, 20.0]
    rng = np.random.default_rng(3)
    times = {u: np.sort(rng.uniform(0, num_samples / FS, 5)) for u in range(num_units)}
    with h5py.File(path, "w") as f:
        f.attrs["mearec_version"] = "1.4.0" if channel_major else "1.11.0"
        f["info/recordings/fs"] = FS
        f["info/recordings/duration"] = num_samples / FS
        f["info/recordings/dtype"] = "int16"
        f["info/recordings/gain"] = "null"
        f["info/electrodes/plane"] = "yz"
        f["info/electrodes/sortlist"] = "null"
        f["info/electrodes/electrode_name"] = "tiny"
        f["info/electrodes/shape"] = "square"
        f["info/electrodes/size"] = 6.0
        f["channel_positions"] = positions
        dataset = f.create_dataset("recordings", data=raw.T if channel_major else raw)
        dataset.attrs["gain_to_uV"] = 0.5
        peaks = np.zeros((num_units, num_channels))
        unit = np.arange(num_units)
        peaks[unit, unit % num_channels] = 40.0 + unit
        f["voltage_peaks"] = peaks
        for unit in range(num_units):
            group = f.create_group(f"spiketrains/{unit}")
            group["times"] = times[unit]
            group["t_stop"] = num_samples / FS
            group["annotations/cell_type"] = "E" if unit < 7 else "I"
            group["annotations/fr"] = 5.0 + unit
            group["annotations/snr"] = 2.0 * unit
            group["annotations/exp_decay"] = "null"
            soma = np.array([30.0 + unit, 8.0, 10.0 * unit])  # MEArec (x=normal, y, z=depth)
            group["annotations/soma_position"] = np.tile(soma, (steps, 1)) if drifting else soma
        if drifting:
            locations = np.zeros((num_units, steps, 3))
            locations[:, :, 2] = 10.0 * np.arange(num_units)[:, None] + 1.5 * np.arange(steps)
            f["template_locations"] = locations
            f["drift_list/0/drift_vector_idxs"] = np.array([0, 1, 2, -2], dtype=np.int16)
            f["drift_list/0/drift_vector_um"] = np.array([0.0, 1.5, 3.0, -3.0], dtype=np.float32)
            f["drift_list/0/drift_fs"] = 100.0
            f["drift_list/0/drift_times"] = "null"
            f["drift_list/0/drift_factors"] = np.where(np.arange(num_units) < 6, 1.0, 0.5)
            f["drift_list/0/drift_steps"] = steps
    return raw, positions, times


def test_reads_native_layout_with_gain_and_numeric_unit_order(tmp_path):
    raw, positions, times = _write_native(tmp_path / "native.h5")
    recording, truth = read_mearec(tmp_path / "native.h5")
    np.testing.assert_array_equal(recording.read(10, 20), raw[10:20].astype(np.float32) * 0.5)
    np.testing.assert_array_equal(recording.channel_positions, positions[:, 1:])
    assert recording.metadata["mearec_info"]["recordings"]["gain"] is None
    assert recording.probe.contact_shapes[0] == "square"
    np.testing.assert_array_equal(truth.unit_ids, np.arange(11))  # '10' after '9', not after '1'
    for unit in range(11):
        eq(truth.unit_samples(unit), np.floor(times[unit] * FS).astype(np.int64))
    _, rounded = read_mearec(tmp_path / "native.h5", time_to_sample="round")
    np.testing.assert_array_equal(rounded.unit_samples(4), np.rint(times[4] * FS).astype(np.int64))
    table = truth.unit_table
    assert table["cell_type"].tolist() == ["exc"] * 7 + ["inh"] * 4
    np.testing.assert_array_equal(table["firing_rate_hz"], 5.0 + np.arange(11))
    np.testing.assert_array_equal(table["snr"], 2.0 * np.arange(11))
    np.testing.assert_array_equal(table["position_um"][3], [8.0, 30.0, 33.0])  # (y, z, x) of MEArec
    np.testing.assert_array_equal(table["peak_channel"], np.arange(11) % 4)
    np.testing.assert_array_equal(table["peak_amplitude_uv"], 0.5 * (40.0 + np.arange(11)))
    assert truth.drift is None


def test_reads_channel_major_files_lazily(tmp_path):
    raw, _, _ = _write_native(tmp_path / "old.h5", channel_major=True)
    recording, _ = read_mearec(tmp_path / "old.h5")
    assert recording.metadata["mearec_layout"] == "channel-major"
    assert recording.traces.shape == (900, 4)
    np.testing.assert_array_equal(recording.read(100, 250), raw[100:250].astype(np.float32) * 0.5)


def test_drift_list_becomes_per_unit_displacement(tmp_path):
    _write_native(tmp_path / "drift.h5", drifting=True)
    _, truth = read_mearec(tmp_path / "drift.h5")
    np.testing.assert_array_equal(truth.drift.samples, [0, 320, 640, 960])  # drift_fs 100 Hz
    # unit 0 (factor 1): steps 0, 1, 2, -2 of 1.5 µm; unit 8 (factor 0.5): int(0, 0.5, 1, -1)
    np.testing.assert_allclose(truth.drift.displacement_um[:, 0], [0.0, 1.5, 3.0, -3.0])
    np.testing.assert_allclose(truth.drift.displacement_um[:, 8], [0.0, 0.0, 1.5, -1.5])
    eq(truth.unit_table["position_um"][2], [8.0, 20.0, 32.0])  # the middle drift step


@pytest.mark.parametrize("name, kind", [
    ("recordings", "dataset"), ("spiketrains", "group"), ("info/recordings/fs", "dataset"),
])
def test_missing_required_entry_is_named(tmp_path, name, kind):
    _write_native(tmp_path / "rec.h5")
    with h5py.File(tmp_path / "rec.h5", "r+") as f:
        del f[name]
    expected = f"rec.h5: .*{kind} '{name}' is missing \\(found"
    with pytest.raises(RecordingFormatError, match=expected):
        read_mearec(tmp_path / "rec.h5")


def test_not_hdf5_and_missing_files_are_explained(tmp_path):
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(RecordingFormatError, match="junk.h5: not an HDF5 file"):
        read_mearec(tmp_path / "junk.h5")
    with pytest.raises(RecordingFormatError, match="does not exist"):
        read_mearec(tmp_path / "nope.h5")


def test_write_is_atomic_and_sorting_stays_a_sorting(tmp_path):
    recording, _ = _recording()
    with pytest.raises(RuntimeError, match="disk on fire"):
        broken = failing_after_first_read(recording)
        write_mearec(tmp_path / "rec.h5", broken, chunk_samples=100)
    assert list(tmp_path.iterdir()) == []
    sorting = Sorting([4, 9], [1, 0], unit_ids=["a", "b"], sampling_frequency=FS)
    write_mearec(tmp_path / "rec.h5", recording, sorting)
    with pytest.raises(FileExistsError):
        write_mearec(tmp_path / "rec.h5", recording, sorting)
    _, loaded = read_mearec(tmp_path / "rec.h5")
    assert type(loaded) is Sorting and loaded.unit_ids.tolist() == ["a", "b"]
    assert loaded.samples.tolist() == [4, 9] and loaded.unit_indices.tolist() == [1, 0]


def test_probeinterface_reads_our_geometry(tmp_path):
    import probeinterface
    recording, _ = _recording()
    write_mearec(tmp_path / "rec.h5", recording, _truth())
    probe = probeinterface.read_mearec(tmp_path / "rec.h5")
    np.testing.assert_array_equal(probe.contact_positions, recording.channel_positions)


def test_spikeinterface_mearec_extractor_agrees(tmp_path):
    import MEArec  # noqa: F401  (pinned: neo's MEArecRawIO behind SpikeInterface's reader needs it)
    import spikeinterface.extractors as se

    recording, traces = _recording()
    truth = _truth()
    write_mearec(tmp_path / "rec.h5", recording, truth)
    si_recording, si_sorting = se.read_mearec(tmp_path / "rec.h5")
    np.testing.assert_array_equal(si_recording.get_traces(return_in_uV=True), traces)
    spikes = si_sorting.to_spike_vector()
    np.testing.assert_array_equal(spikes["sample_index"], truth.samples)
    np.testing.assert_array_equal(spikes["unit_index"], truth.unit_indices)
