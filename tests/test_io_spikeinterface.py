"""Recording/Sorting <-> SpikeInterface: lazy both ways, exact for float32 traces and spikes."""

import numpy as np
import probeinterface
import pytest

spikeinterface = pytest.importorskip("spikeinterface")
from spikeinterface.core import BinaryRecordingExtractor, NumpyRecording, NumpySorting  # noqa: E402

from esort_jax import ArrayTraces, Recording, Sorting  # noqa: E402
from esort_jax.io import (  # noqa: E402
    from_spikeinterface_recording,
    from_spikeinterface_sorting,
    read_recording_folder,
    to_spikeinterface_recording,
    to_spikeinterface_sorting,
    write_recording_folder,
)
from esort_jax.io.spikeinterface import SAVE_JOB_KWARGS  # noqa: E402

FS = 30000.0
eq = np.testing.assert_array_equal
pytestmark = pytest.mark.filterwarnings("ignore:The extractor is not serializable")
JOB = SAVE_JOB_KWARGS


def _recording(num_samples=1200, num_channels=5, seed=0, probe=False):
    rng = np.random.default_rng(seed)
    traces = (10 * rng.standard_normal((num_samples, num_channels))).astype(np.float32)
    positions = np.stack([np.zeros(num_channels), 25.0 * np.arange(num_channels)], axis=1)
    site_probe = None
    if probe:
        site_probe = probeinterface.Probe(ndim=2, si_units="um")
        site_probe.set_contacts(positions, shapes="square", shape_params={"width": 12.0})
    ids = np.arange(10, 10 + num_channels)
    return Recording(ArrayTraces(traces), FS, positions, probe=site_probe, channel_ids=ids), traces


def test_folder_recording_becomes_a_serialisable_binary_extractor(tmp_path):
    recording, traces = _recording(probe=True)
    write_recording_folder(tmp_path / "rec", recording)
    ours, _ = read_recording_folder(tmp_path / "rec")
    si_recording = to_spikeinterface_recording(ours)
    assert isinstance(si_recording, BinaryRecordingExtractor)
    assert si_recording.check_serializability("json")
    np.testing.assert_array_equal(si_recording.get_traces(return_in_uV=True), traces)
    span = si_recording.get_traces(start_frame=100, end_frame=300, return_in_uV=True)
    eq(span, traces[100:300])
    np.testing.assert_array_equal(si_recording.get_channel_locations(), recording.channel_positions)
    assert si_recording.channel_ids.tolist() == list(range(10, 15))
    assert si_recording.get_probe().contact_shapes.tolist() == ["square"] * 5
    back = from_spikeinterface_recording(spikeinterface.load(si_recording.to_dict()))
    np.testing.assert_array_equal(back.read(), traces)


def test_int16_folder_keeps_its_gain(tmp_path):
    recording, _ = _recording()
    write_recording_folder(tmp_path / "rec", recording, dtype="int16", gain_to_uv=0.05)
    ours, _ = read_recording_folder(tmp_path / "rec")
    si_recording = to_spikeinterface_recording(ours)
    assert si_recording.get_dtype() == np.int16
    np.testing.assert_array_equal(si_recording.get_traces(), np.asarray(ours.traces.array))
    np.testing.assert_allclose(si_recording.get_traces(return_in_uV=True), ours.read(), rtol=1e-6)
    back = from_spikeinterface_recording(si_recording)
    assert back.traces.in_uv
    np.testing.assert_allclose(back.read(), ours.read(), rtol=1e-6)


def test_in_memory_recording_round_trips_through_a_saved_folder(tmp_path):
    recording, traces = _recording()
    si_recording = to_spikeinterface_recording(recording)
    assert not isinstance(si_recording, BinaryRecordingExtractor)
    picked = si_recording.get_traces(channel_ids=[11, 13], start_frame=5, end_frame=9)
    eq(picked, traces[5:9, [1, 3]])
    si_recording.save(folder=tmp_path / "si_rec", **JOB)
    loaded = from_spikeinterface_recording(spikeinterface.load(tmp_path / "si_rec"))
    assert loaded.read().dtype == np.float32
    np.testing.assert_array_equal(loaded.read(), traces)
    np.testing.assert_array_equal(loaded.read(1000, 1200), traces[1000:1200])
    np.testing.assert_array_equal(loaded.channel_positions, recording.channel_positions)
    np.testing.assert_array_equal(loaded.channel_ids, recording.channel_ids)
    assert loaded.sampling_frequency == FS and loaded.probe is not None


def test_from_spikeinterface_without_probe_or_with_segments():
    traces = np.arange(40, dtype=np.float32).reshape(10, 4)
    plain = NumpyRecording([traces], FS)
    with pytest.warns(UserWarning, match="no probe attached, so its 4 channels get no positions"):
        recording = from_spikeinterface_recording(plain)
    np.testing.assert_array_equal(recording.read(2, 5), traces[2:5])
    assert np.isnan(recording.channel_positions).all()
    assert not recording.metadata["channel_positions_known"]
    two = NumpyRecording([traces, 2 * traces[:6]], FS)
    with pytest.raises(ValueError, match="has 2 segments; pass segment_index"):
        from_spikeinterface_recording(two)
    with pytest.warns(UserWarning, match="no positions"):
        second = from_spikeinterface_recording(two, segment_index=1)
    assert second.num_samples == 6
    np.testing.assert_array_equal(second.read(), 2 * traces[:6])


def test_sorting_round_trip_keeps_samples_and_unit_ids(tmp_path):
    sorting = Sorting(samples=[3, 3, 50, 70, 999], unit_indices=[2, 0, 1, 2, 0],
                      unit_ids=np.array(["b", "a", "c", "silent"]), sampling_frequency=FS)
    si_sorting = to_spikeinterface_sorting(sorting)
    assert si_sorting.unit_ids.tolist() == ["b", "a", "c", "silent"]
    assert si_sorting.get_unit_spike_train("c").tolist() == [3, 70]
    assert si_sorting.get_unit_spike_train("silent").tolist() == []
    saved = si_sorting.save(folder=tmp_path / "sorting")
    for candidate in (si_sorting, saved, spikeinterface.load(saved.to_dict())):
        back = from_spikeinterface_sorting(candidate)
        np.testing.assert_array_equal(back.samples, sorting.samples)
        np.testing.assert_array_equal(back.unit_indices, sorting.unit_indices)
        np.testing.assert_array_equal(back.unit_ids, sorting.unit_ids)
        assert back.sampling_frequency == FS
    reloaded = from_spikeinterface_sorting(spikeinterface.load(tmp_path / "sorting"))
    np.testing.assert_array_equal(reloaded.samples, sorting.samples)
    np.testing.assert_array_equal(reloaded.unit_ids, sorting.unit_ids)


def test_multi_segment_sorting_needs_a_segment():
    two = NumpySorting.from_samples_and_labels(
        [np.array([1, 2]), np.array([5])], [np.array([0, 1]), np.array([1])], FS
    )
    with pytest.raises(ValueError, match="has 2 segments"):
        from_spikeinterface_sorting(two)
    second = from_spikeinterface_sorting(two, segment_index=1)
    assert second.samples.tolist() == [5] and second.unit_ids[second.unit_indices].tolist() == [1]
