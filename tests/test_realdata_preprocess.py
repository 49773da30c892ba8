"""esort_jax.realdata.preprocess: SpikeInterface's preprocessing chain as a config, lazily."""

from pathlib import Path

import numpy as np
import pytest

from esort_jax import ArrayTraces, Recording
from esort_jax.config import ConfigError
from esort_jax.io import (
    to_spikeinterface_recording,
)
from esort_jax.io.spikeinterface import SAVE_JOB_KWARGS
from esort_jax.realdata.preprocess import PreprocessConfig, preprocess, preprocessed_recording
from tests._tiny import FS, fast_compile, tiny_recording  # noqa: F401  (fixture)


REPO = Path(__file__).resolve().parent.parent
JOB = SAVE_JOB_KWARGS
pytestmark = pytest.mark.filterwarnings(
    "ignore:The extractor is not serializable", "ignore:Empty units have been removed"
)


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
