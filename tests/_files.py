"""Small recordings and recording folders for the io tests, and a check that reading writes
nothing."""

import contextlib
from pathlib import Path

import numpy as np

from esort_jax import ArrayTraces, GroundTruth, Recording
from esort_jax.io import write_recording_folder

FS = 32000.0


def noise_recording(num_samples=1000, num_channels=8, seed=0, fs=FS):
    """(Recording, its traces): seeded unit-variance float32 noise, channels 20 µm apart in depth."""
    traces = np.random.default_rng(seed).standard_normal((num_samples, num_channels)).astype(np.float32)
    positions = np.stack([np.zeros(num_channels), 20.0 * np.arange(num_channels)], axis=1)
    return Recording(ArrayTraces(traces), fs, positions), traces


def failing_after_first_read(recording: Recording) -> Recording:
    """`recording`'s geometry with traces whose reads fail ('disk on fire') after the first
    chunk: a write that dies part-way."""

    class Exploding:
        shape = recording.traces.shape

        def read(self, start, stop):
            if start > 0:
                raise RuntimeError("disk on fire")
            return np.zeros((stop - start, recording.num_channels), np.float32)

    return Recording(Exploding(), recording.sampling_frequency, recording.channel_positions)


def small_data(samples=400, channels=4):
    """(Recording, GroundTruth): noise, and three spikes of units 5 and 6 at samples 10, 200, 390."""
    recording, _ = noise_recording(samples, channels)
    truth = GroundTruth(samples=[10, 200, 390], unit_indices=[0, 1, 0], unit_ids=[5, 6], sampling_frequency=FS)
    return recording, truth


def recording_folder(tmp_path: Path, name="rec", truth=True) -> Path:
    """`small_data` written as an esort_jax recording folder (with its ground truth unless
    truth=False)."""
    recording, ground_truth = small_data()
    return write_recording_folder(tmp_path / name, recording, ground_truth if truth else None)


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
            for p in sorted(root.rglob("*"))}


@contextlib.contextmanager
def unchanged(root: Path):
    """Assert the block writes, removes and changes nothing under `root`."""
    before = _snapshot(root)
    yield
    assert _snapshot(root) == before
