"""esort_jax.io.extractors: raw binary files with a probe file, and SpikeInterface folders of them."""

from pathlib import Path

import numpy as np
import probeinterface
import pytest

from esort_jax.config import ConfigError
from esort_jax.io import (
    BinaryOptions,
    RecordingFormatError,
    RecordingSource,
    load_recording,
    to_spikeinterface_recording,
)
from esort_jax.io.spikeinterface import SAVE_JOB_KWARGS
from tests._tiny import FS, fast_compile, tiny_recording  # noqa: F401  (fixture)


REPO = Path(__file__).resolve().parent.parent
JOB = SAVE_JOB_KWARGS
pytestmark = pytest.mark.filterwarnings(
    "ignore:The extractor is not serializable", "ignore:Empty units have been removed"
)


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
