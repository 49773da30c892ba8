"""load_recording picks the reader from what the path holds, and says what it found otherwise."""

import h5py
import numpy as np
import pytest

from esort_jax import ArrayTraces, GroundTruth, Recording, Sorting
from esort_jax.config import ConfigError
from esort_jax.io import RecordingFormatError, load_recording, write_mearec, write_recording_folder
from esort_jax.io.extractors import BinaryOptions
from esort_jax.io.spikeinterface import SAVE_JOB_KWARGS

FS = 32000.0
pytestmark = pytest.mark.filterwarnings("ignore:The extractor is not serializable")


def _data():
    traces = np.random.default_rng(0).standard_normal((400, 4)).astype(np.float32)
    positions = np.stack([np.zeros(4), 20.0 * np.arange(4)], axis=1)
    truth = GroundTruth(
        samples=[10, 200, 390], unit_indices=[0, 1, 0], unit_ids=[5, 6], sampling_frequency=FS
    )
    return Recording(ArrayTraces(traces), FS, positions), truth, traces


def test_our_folder_and_mearec_file(tmp_path):
    recording, truth, traces = _data()
    write_recording_folder(tmp_path / "ours", recording, truth)
    write_mearec(tmp_path / "sim.h5", recording, truth)
    for path in (tmp_path / "ours", tmp_path / "sim.h5"):
        loaded, loaded_truth = load_recording(path)
        np.testing.assert_array_equal(loaded.read(), traces)
        assert isinstance(loaded_truth, GroundTruth)
        assert loaded_truth.samples.tolist() == [10, 200, 390]
        assert loaded_truth.unit_ids.tolist() == [5, 6]


def test_hdf5_without_mearec_entries_says_which(tmp_path):
    with h5py.File(tmp_path / "other.hdf5", "w") as f:
        f["recordings"] = np.zeros((10, 2), np.float32)
        f["something"] = 1
    expected = "group 'spiketrains' is missing.*top level holds: recordings, something"
    with pytest.raises(RecordingFormatError, match=expected):
        load_recording(tmp_path / "other.hdf5")


def test_spikeinterface_folders(tmp_path):
    spikeinterface = pytest.importorskip("spikeinterface")
    from esort_jax.io import to_spikeinterface_recording, to_spikeinterface_sorting

    recording, truth, traces = _data()
    job = SAVE_JOB_KWARGS
    to_spikeinterface_recording(recording).save(folder=tmp_path / "pair" / "recording", **job)
    loaded, nothing = load_recording(tmp_path / "pair" / "recording")
    assert nothing is None
    np.testing.assert_array_equal(loaded.read(), traces)

    to_spikeinterface_sorting(truth).save(folder=tmp_path / "pair" / "sorting")
    loaded, sorting = load_recording(tmp_path / "pair")  # a recording with its sorting alongside
    np.testing.assert_array_equal(loaded.read(), traces)
    assert type(sorting) is Sorting
    assert sorting.samples.tolist() == [10, 200, 390] and sorting.unit_ids.tolist() == [5, 6]
    with pytest.raises(RecordingFormatError, match="a SpikeInterface sorting, not a recording"):
        load_recording(tmp_path / "pair" / "sorting")
    assert spikeinterface.__version__


def test_unrecognised_paths_are_described(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "a.txt").write_text("hi")
    (tmp_path / "stuff" / "b.bin").write_bytes(b"\0" * 8)
    expected = r"stuff: not a recognised recording: a folder containing \[a.txt, b.bin\]; expected"
    with pytest.raises(RecordingFormatError, match=expected):
        load_recording(tmp_path / "stuff")
    with pytest.raises(RecordingFormatError, match="nope: does not exist"):
        load_recording(tmp_path / "nope")
    expected = r"a.txt: not a recognised recording: a file \(2 bytes, suffix '.txt'\)"
    with pytest.raises(RecordingFormatError, match=expected):
        load_recording(tmp_path / "stuff" / "a.txt")
    (tmp_path / "fake.h5").write_bytes(b"garbage")
    expected = "fake.h5: not a recognised recording: not a readable HDF5 file"
    with pytest.raises(RecordingFormatError, match=expected):
        load_recording(tmp_path / "fake.h5")


def test_spikeglx_neuropixels_folder(tmp_path):
    """A SpikeGLX NP1.0 run folder: recognised, the AP stream without the sync channel, µV from
    the .meta gains, NP1 geometry from the imro table, phase shift in the preprocessing (the
    stream carries inter_sample_shift), a wrong stream named with the ones there are."""
    from esort_jax.io.loader import detect_format, open_spikeinterface_recording
    from esort_jax.realdata.preprocess import PreprocessConfig, preprocessed_recording
    from tests._spikeglx import NP1_UV_PER_BIT, write_spikeglx_np1

    rng = np.random.default_rng(0)
    counts = rng.integers(-200, 200, size=(3000, 384)).astype(np.int16)
    write_spikeglx_np1(tmp_path / "run_g0", counts)
    assert detect_format(tmp_path / "run_g0") == "spikeglx"
    recording, labels = load_recording(tmp_path / "run_g0")
    assert labels is None and recording.num_channels == 384 and recording.num_samples == 3000
    assert recording.sampling_frequency == 30000.0
    np.testing.assert_allclose(recording.read(100, 200), counts[100:200] * NP1_UV_PER_BIT, rtol=1e-6)
    positions = recording.channel_positions  # NP1 checkerboard: x in {0, 16, 32, 48} µm, 20 µm rows
    assert sorted(set(positions[:, 0].tolist())) == [0.0, 16.0, 32.0, 48.0]
    assert positions[:, 1].min() == 0.0 and positions[:, 1].max() == 20.0 * 191
    si_recording, _ = open_spikeinterface_recording(tmp_path / "run_g0")
    processed = preprocessed_recording(si_recording, PreprocessConfig())
    assert processed.metadata["preprocess"][0] == "phase_shift" and processed.read(0, 50).shape == (50, 384)
    with pytest.raises(RecordingFormatError, match=r"stream_id imec1.ap is not in \['imec0.ap'"):
        load_recording(tmp_path / "run_g0", stream_id="imec1.ap")


def test_openephys_without_probe_settings_takes_a_probe_file(tmp_path):
    """Open Ephys binary data whose settings describe no probe: loads in µV with a warning that
    the channels have no positions; `probe=` (recording.probe) attaches a probeinterface file,
    for any format; a file with another contact count is refused naming the key."""
    import probeinterface
    import warnings

    from esort_jax.io.loader import RecordingSource, detect_format
    from tests._openephys import BIT_VOLTS, write_openephys_binary
    from tests._spikeglx import write_spikeglx_np1

    counts = np.random.default_rng(1).integers(-300, 300, size=(2000, 32)).astype(np.int16)
    session = write_openephys_binary(tmp_path / "session", counts)
    assert detect_format(session) == "openephys"
    with pytest.warns(UserWarning, match="no probe attached, so its 32 channels get no positions"):
        bare, _ = load_recording(session)
    assert bare.sampling_frequency == 30000.0 and np.isnan(bare.channel_positions).all()
    np.testing.assert_allclose(bare.read(0, 100), counts[:100] * BIT_VOLTS, rtol=1e-6)

    probe = probeinterface.generate_linear_probe(num_elec=32, ypitch=25.0)
    probe.set_device_channel_indices(np.arange(32))
    probeinterface.write_probeinterface(tmp_path / "probe.json", probe)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        located, _ = load_recording(session, probe=tmp_path / "probe.json")
    np.testing.assert_allclose(located.channel_positions[:, 1], 25.0 * np.arange(32))
    np.testing.assert_allclose(located.read(0, 100), bare.read(0, 100))
    si_recording, _ = RecordingSource(path=str(session), probe=str(tmp_path / "probe.json")).open()
    np.testing.assert_allclose(si_recording.get_channel_locations()[:, 1], 25.0 * np.arange(32))

    small = probeinterface.generate_linear_probe(num_elec=16, ypitch=25.0)
    probeinterface.write_probeinterface(tmp_path / "small.json", small)
    with pytest.raises(RecordingFormatError, match="recording.probe: .*small.json describes 16 contacts but the recording has 32"):
        load_recording(session, probe=tmp_path / "small.json")
    with pytest.raises(ConfigError, match="recording.probe: set either recording.probe or recording.binary.probe"):
        RecordingSource(path=str(session), probe="a.json", binary=BinaryOptions(probe="b.json")).validate()

    # a probe file replaces the geometry an acquisition reader found (here SpikeGLX's NP1 layout)
    write_spikeglx_np1(tmp_path / "sglx", np.zeros((500, 384), np.int16))
    line = probeinterface.generate_linear_probe(num_elec=384, ypitch=10.0)
    probeinterface.write_probeinterface(tmp_path / "line.json", line)
    replaced, _ = load_recording(tmp_path / "sglx", probe=tmp_path / "line.json")
    np.testing.assert_allclose(replaced.channel_positions[:, 1], 10.0 * np.arange(384))


def test_a_sequence_of_sortings_becomes_one_spikeinterface_segment_each():
    from esort_jax.io import to_spikeinterface_sorting
    from esort_jax.recording import Sorting

    a = Sorting(np.array([5, 9]), np.array([0, 1]), np.array(["x", "y"]), 32000.0)
    b = Sorting(np.array([3]), np.array([1]), np.array(["x", "y"]), 32000.0)
    si_sorting = to_spikeinterface_sorting([a, b])
    assert si_sorting.get_num_segments() == 2 and list(si_sorting.unit_ids) == ["x", "y"]
    assert si_sorting.get_unit_spike_train("y", segment_index=1).tolist() == [3]
    with pytest.raises(ValueError, match="share unit ids"):
        to_spikeinterface_sorting([a, Sorting(np.array([3]), np.array([0]), np.array(["x"]), 32000.0)])
    with pytest.raises(ValueError, match="no segments"):
        to_spikeinterface_sorting([])
