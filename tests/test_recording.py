import numpy as np
import pytest

from esort_jax import ArrayTraces, Drift, GroundTruth, Recording, Sorting
from esort_jax.io import RecordingFormatError, read_recording_folder, write_recording_folder


def _recording(num_samples=1000, num_channels=8, seed=0):
    rng = np.random.default_rng(seed)
    traces = rng.standard_normal((num_samples, num_channels)).astype(np.float32)
    positions = np.stack([np.zeros(num_channels), 20.0 * np.arange(num_channels)], axis=1)
    return Recording(ArrayTraces(traces), 32000.0, positions), traces


def test_sorting_sorts_and_validates():
    sorting = Sorting(samples=[9, 3, 3], unit_indices=[0, 1, 0], unit_ids=["a", "b"], sampling_frequency=1e3)
    assert sorting.samples.tolist() == [3, 3, 9]
    assert sorting.unit_indices.tolist() == [0, 1, 0]
    assert sorting.spike_counts().tolist() == [2, 1]
    with pytest.raises(ValueError, match="unit_indices must lie"):
        Sorting(samples=[1], unit_indices=[2], unit_ids=[0, 1], sampling_frequency=1e3)


def test_ground_truth_keeps_per_spike_fields_aligned():
    truth = GroundTruth(
        samples=[50, 10, 30], unit_indices=[0, 1, 0], unit_ids=[0, 1], sampling_frequency=1e3,
        spike_amplitude_scales=[1.5, 0.5, 1.0],
        drift=Drift(samples=np.array([0, 100]), displacement_um=np.array([[0.0, 0.0], [10.0, -10.0]])),
    )
    assert truth.spike_amplitude_scales.tolist() == [0.5, 1.0, 1.5]
    np.testing.assert_allclose(truth.spike_displacement_um(), [-1.0, 3.0, 5.0])
    late = truth.in_span(20, 100)
    assert late.samples.tolist() == [30, 50] and late.spike_amplitude_scales.tolist() == [1.0, 1.5]


def test_recording_rejects_mismatched_geometry():
    with pytest.raises(ValueError, match="channel_positions has 3 rows"):
        Recording(ArrayTraces(np.zeros((10, 4), np.float32)), 1e3, np.zeros((3, 2)))
    recording, _ = _recording()
    with pytest.raises(IndexError, match="outside the recording"):
        recording.read(0, 2000)


def test_folder_round_trip_is_exact_and_lazy(tmp_path):
    recording, traces = _recording()
    truth = GroundTruth(samples=[5, 700], unit_indices=[1, 0], unit_ids=[3, 4], sampling_frequency=32e3,
                        unit_table={"snr": np.array([2.0, 3.0])})
    write_recording_folder(tmp_path / "rec", recording, truth, metadata={"seed": 7}, chunk_samples=333)
    loaded, loaded_truth = read_recording_folder(tmp_path / "rec")
    assert isinstance(loaded.traces.array, np.memmap)
    np.testing.assert_array_equal(loaded.read(), traces)
    np.testing.assert_array_equal(loaded.read(100, 200), traces[100:200])
    assert loaded_truth.samples.tolist() == [5, 700]
    assert loaded_truth.unit_table["snr"].tolist() == [2.0, 3.0]
    assert loaded.metadata["folder_metadata"]["seed"] == 7


def test_folder_int16_storage_scales_back(tmp_path):
    recording, traces = _recording()
    write_recording_folder(tmp_path / "rec", recording, dtype="int16", gain_to_uv=0.01)
    loaded, truth = read_recording_folder(tmp_path / "rec")
    assert truth is None and loaded.traces.array.dtype == np.int16
    np.testing.assert_allclose(loaded.read(), traces, atol=0.005 + 1e-6)


def test_folder_write_is_atomic(tmp_path):
    recording, _ = _recording()

    class Exploding:
        shape = recording.traces.shape

        def read(self, start, stop):
            if start > 0:
                raise RuntimeError("disk on fire")
            return np.zeros((stop - start, 8), np.float32)

    broken = Recording(Exploding(), 32e3, recording.channel_positions)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_recording_folder(tmp_path / "rec", broken, chunk_samples=100)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind
    write_recording_folder(tmp_path / "rec", recording)
    with pytest.raises(FileExistsError):
        write_recording_folder(tmp_path / "rec", recording)


def test_truncated_traces_are_named(tmp_path):
    recording, _ = _recording()
    write_recording_folder(tmp_path / "rec", recording)
    with open(tmp_path / "rec" / "traces.npy", "r+b") as handle:
        handle.truncate(4000)
    with pytest.raises(RecordingFormatError, match="traces.npy is truncated"):
        read_recording_folder(tmp_path / "rec")


def test_select_units_and_unit_index_of():
    import pytest

    sorting = Sorting(np.array([5, 6, 7, 8]), np.array([0, 1, 2, 1]), np.array([10, 20, 30]), 32000.0)
    two = sorting.select_units(np.array([2, 1]))  # in that order
    assert two.unit_ids.tolist() == [30, 20]
    assert two.samples.tolist() == [6, 7, 8] and two.unit_ids[two.unit_indices].tolist() == [20, 30, 20]
    assert sorting.unit_index_of([30, np.int64(10)]).tolist() == [2, 0]
    with pytest.raises(KeyError, match=r"unit ids \[40\] are not among this sorting's 3 units"):
        sorting.unit_index_of([10, 40])
