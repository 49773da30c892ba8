"""Tiny synthetic data for the windows / train / checkpoint / transfer tests (numpy only).

Noise plus a few fixed waveforms at known spike times, so the tests do not depend on data_gen.
"""

import jax
import numpy as np
import pytest

from esort_jax import ArrayTraces, GroundTruth, Recording
from esort_jax.model import ModelConfig

TINY_MODEL = ModelConfig(window=20, anchor=9, temporal_features=(4, 8), spatial_features=16)
FS = 32000.0


def tiny_recording(
    num_channels=8, num_units=3, duration_s=1.5, rate_hz=40.0, amplitude=8.0, seed=0, unit_ids=None
):
    """(Recording, GroundTruth): unit-variance noise plus one waveform per unit.

    Each unit has a 16-sample biphasic waveform with its trough 6 samples after onset, on two
    neighbouring channels; the spike sample is the trough. Refractory gap >= 40 samples.
    """
    rng = np.random.default_rng(seed)
    num_samples = int(duration_s * FS)
    traces = rng.standard_normal((num_samples, num_channels)).astype(np.float32)
    t = np.arange(16)
    trains = {}
    ids = list(range(num_units)) if unit_ids is None else list(unit_ids)
    for u, uid in enumerate(ids):
        shape = -np.exp(-0.5 * ((t - 6) / (1.0 + 0.4 * u)) ** 2) + 0.4 * np.exp(-0.5 * ((t - 11) / 2.0) ** 2)
        gains = np.zeros(num_channels)
        main = (3 * u) % num_channels
        gains[main], gains[(main + 1) % num_channels] = 1.0, 0.5 + 0.2 * u
        gaps = 40 + rng.exponential(FS / rate_hz, size=int(2 * duration_s * rate_hz) + 10).astype(np.int64)
        spikes = np.cumsum(gaps)
        spikes = spikes[(spikes >= 10) & (spikes < num_samples - 10)]
        for s in spikes:
            traces[s - 6 : s + 10] += (amplitude * shape[:, None] * gains[None, :]).astype(np.float32)
        trains[uid] = spikes
    positions = np.stack([np.zeros(num_channels), 20.0 * np.arange(num_channels)], axis=1)
    recording = Recording(ArrayTraces(traces), FS, positions, metadata={"kind": "tiny", "seed": seed})
    samples = np.concatenate(list(trains.values()))
    unit_indices = np.concatenate([np.full(v.size, i) for i, v in enumerate(trains.values())])
    truth = GroundTruth(samples=samples, unit_indices=unit_indices, unit_ids=np.asarray(ids), sampling_frequency=FS)
    return recording, truth


@pytest.fixture(autouse=True, scope="module")
def fast_compile():
    """Tiny shapes: XLA compile time dominates, so compile without most optimisations here
    (imported by the train / checkpoint / transfer test modules; restored afterwards). The flag
    is not part of jit's cache key, so executables compiled under the other setting by earlier
    modules are dropped first (else two paths the tests compare bit for bit, one compiled here
    and one reused, could round differently), and this module's are dropped afterwards."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
    jax.clear_caches()
