import numpy as np
import pytest

from esort_jax import ArrayTraces, Drift, GroundTruth, Recording, Sorting
from tests._files import noise_recording


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
    recording, _ = noise_recording()
    with pytest.raises(IndexError, match="outside the recording"):
        recording.read(0, 2000)


def test_select_units_and_unit_index_of():
    import pytest

    sorting = Sorting(np.array([5, 6, 7, 8]), np.array([0, 1, 2, 1]), np.array([10, 20, 30]), 32000.0)
    two = sorting.select_units(np.array([2, 1]))  # in that order
    assert two.unit_ids.tolist() == [30, 20]
    assert two.samples.tolist() == [6, 7, 8] and two.unit_ids[two.unit_indices].tolist() == [20, 30, 20]
    assert sorting.unit_index_of([30, np.int64(10)]).tolist() == [2, 0]
    with pytest.raises(KeyError, match=r"unit ids \[40\] are not among this sorting's 3 units"):
        sorting.unit_index_of([10, 40])
