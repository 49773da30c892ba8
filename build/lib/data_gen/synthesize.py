"""Synthesise a Neuropixels-like recording with ground truth: probe -> units -> templates ->
firing -> drift -> noise, then traces computed lazily, span by span.

Everything small is decided up front (units, templates on a displacement grid, every spike's
sample, unit, displacement and amplitude factor); the traces are a `SyntheticTraces` whose
`read(start, stop)` computes exactly that span: the noise blocks covering it plus every spike
whose waveform overlaps it (including spikes that start before `start` or end after `stop`),
added in (sample, unit) order. So chunked reads equal one-shot reads bit for bit, any span can
be read first, and memory is bounded by the span, not the duration.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from data_gen.config import SynthesisConfig
from data_gen.drift import displacement_ranges, make_drift
from data_gen.firing import draw_rates, refractory_samples, spike_trains
from data_gen.noise import NoiseSource
from data_gen.probes import probe_from_config
from data_gen.seeding import stream_rng
from data_gen.templates import TemplateBank, build_templates, draw_shapes
from data_gen.units import place_units
from esort_jax.config import from_dict, to_dict
from esort_jax.runtime.host_memory import fix_mmap_threshold
from esort_jax.recording import GroundTruth, Recording

__all__ = ["SyntheticTraces", "synthesize", "write_synthetic", "resolve_config", "amplitude_jitter", "spikes_by_unit"]

GENERATOR = "data_gen"
GENERATOR_VERSION = 1


class SyntheticTraces:
    """A `TraceSource` computing noise + spikes for any span on demand (float32 µV).

    Attributes are the precomputed ingredients: `noise` (a NoiseSource), `bank` (TemplateBank),
    and per spike (sorted by sample, then unit): `samples`, `unit_indices`, `grid_index` /
    `grid_fraction` (position on the unit's displacement grid) and `amplitude` (jitter factor).

    read_ahead: after each read(start, stop), compute up to this many following spans of the
      same length in a background thread, handed out if they are the spans asked for next
      (what a sequential writer does; `write_synthetic` sets 2). Results are the same either
      way; a non-sequential read drops them. 0 (default) computes nothing ahead.
    """

    def __init__(
        self,
        num_samples: int,
        noise: NoiseSource,
        bank: TemplateBank,
        samples: np.ndarray,
        unit_indices: np.ndarray,
        displacement_um: np.ndarray,
        amplitude: np.ndarray,
    ):
        self.num_samples = int(num_samples)
        self.noise = noise
        self.bank = bank
        self.samples = np.asarray(samples, np.int64)
        self.unit_indices = np.asarray(unit_indices, np.int64)
        self.amplitude = np.asarray(amplitude, np.float32)
        self.grid_index = np.zeros(self.samples.size, np.int64)
        self.grid_fraction = np.zeros(self.samples.size, np.float32)
        displacement_um = np.asarray(displacement_um, np.float64)
        for unit, where in enumerate(spikes_by_unit(self.unit_indices, bank.num_units)):
            if bank.waveforms[unit].shape[0] > 1 and where.size:
                self.grid_index[where], self.grid_fraction[where] = bank.grid_position(unit, displacement_um[where])
        # Spike s covers samples [s - trough_index, s - trough_index + L).
        self._lead = bank.trough_index
        self._length = bank.num_samples
        self.read_ahead = 0
        self._ahead = collections.deque()  # (start, stop, Future) of the next spans
        self._ahead_pool = None
        self._ahead_lock = threading.Lock()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_ahead"], state["_ahead_pool"], state["_ahead_lock"] = collections.deque(), None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._ahead_lock = threading.Lock()

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_samples, self.bank.num_channels)

    def read(self, start: int, stop: int) -> np.ndarray:
        if not 0 <= start <= stop <= self.num_samples:
            raise IndexError(f"span [{start}, {stop}) is outside the recording's {self.num_samples} samples")
        with self._ahead_lock:
            ahead = self._ahead
            if ahead and ahead[0][:2] == (start, stop):
                future = ahead.popleft()[2]
            else:
                future = None
                for _, _, stale in ahead:  # not a sequential read: drop what was computed ahead
                    stale.cancel()
                ahead.clear()
        out = future.result() if future is not None else self.compute(start, stop)
        depth = int(self.read_ahead)
        if depth > 0 and start < stop:
            with self._ahead_lock:
                if self._ahead_pool is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._ahead_pool = ThreadPoolExecutor(1, thread_name_prefix="data_gen-read-ahead")
                last = self._ahead[-1][1] if self._ahead else stop
                while len(self._ahead) < depth and last < self.num_samples:
                    following = (last, min(self.num_samples, last + stop - start))
                    self._ahead.append((*following, self._ahead_pool.submit(self.compute, *following)))
                    last = following[1]
        return out

    def compute(self, start: int, stop: int) -> np.ndarray:
        """The span [start, stop): noise blocks covering it plus every overlapping spike."""
        out = self.noise.read(start, stop)
        self.add_spikes(out, start)
        return out

    def add_spikes(self, out: np.ndarray, start: int) -> None:
        """Add every spike overlapping [start, start + len(out)) to `out` in place.

        Waveforms are interpolated per unit for all its spikes in the span at once
        (elementwise, so the values do not depend on the span), then added one by one, units
        in order and each unit's spikes in time order: every sample receives its spikes'
        contributions in the same order whatever the span, hence exact chunking.
        """
        stop = start + out.shape[0]
        lead, length = self._lead, self._length
        first = int(np.searchsorted(self.samples, start + lead - length, side="right"))
        last = int(np.searchsorted(self.samples, stop + lead, side="left"))
        if first >= last:
            return
        bank = self.bank
        units = self.unit_indices[first:last]
        order = np.argsort(units, kind="stable")
        sorted_units = units[order]
        bounds = np.flatnonzero(np.diff(sorted_units)) + 1
        one = np.float32(1.0)
        for group in np.split(order + first, bounds):
            u = int(self.unit_indices[group[0]])
            table = bank.waveforms[u]
            grid, positions, samples_per = table.shape[0], table.shape[1], table.shape[2]
            flat = table.reshape(grid, positions * samples_per)
            a = self.amplitude[group][:, None]
            if grid == 1:
                waves = flat[0][None, :] * a
            else:
                g = self.grid_index[group]
                f = self.grid_fraction[group][:, None]
                waves = flat[g] * (a * (one - f))
                waves += flat[g + 1] * (a * f)
            waves = waves.reshape(-1, positions, samples_per)
            c0, c1 = int(bank.channel_start[u]), int(bank.channel_stop[u])
            for wave, s in zip(waves, self.samples[group].tolist()):
                t0 = s - lead - start
                if t0 >= 0 and t0 + length <= out.shape[0]:
                    out[t0 : t0 + length, c0:c1] += wave
                else:
                    i0, i1 = max(0, -t0), min(length, stop - start - t0)
                    out[t0 + i0 : t0 + i1, c0:c1] += wave[i0:i1]


def spikes_by_unit(unit_indices: np.ndarray, num_units: int) -> list[np.ndarray]:
    """For each unit, the positions of its spikes in `unit_indices`, in their original order."""
    order = np.argsort(unit_indices, kind="stable")
    bounds = np.searchsorted(unit_indices[order], np.arange(num_units + 1))
    return [order[bounds[u] : bounds[u + 1]] for u in range(num_units)]


def resolve_config(config: SynthesisConfig | Mapping | None, where: str = "data") -> SynthesisConfig:
    """A validated SynthesisConfig from a dataclass or a plain mapping (e.g. Hydra's)."""
    if config is None:
        config = SynthesisConfig()
    if isinstance(config, SynthesisConfig):
        config.validate(where)
        return config
    return from_dict(SynthesisConfig, config, where)


def amplitude_jitter(sd: float, unit_indices: np.ndarray, num_units: int, seed: int) -> np.ndarray:
    """[S] per-spike amplitude factors exp(sd N(0, 1)), each unit from stream ('jitter', unit).

    Spikes are taken in the given (time) order within each unit, so the factor of a unit's
    k-th spike does not depend on the other units or on the recording's length.
    """
    out = np.ones(unit_indices.size, np.float32)
    if sd <= 0:
        return out
    for unit, where in enumerate(spikes_by_unit(unit_indices, num_units)):
        if where.size:
            z = stream_rng(seed, "jitter", unit).standard_normal(where.size)
            out[where] = np.exp(sd * z).astype(np.float32)
    return out


def synthesize(config: SynthesisConfig | Mapping | None = None) -> tuple[Recording, GroundTruth]:
    """(Recording with lazy SyntheticTraces, GroundTruth) for a synthesis config."""
    fix_mmap_threshold()  # before the first allocation: else reading creeps with length (esort_jax.runtime.host_memory)
    config = resolve_config(config)
    fs = config.sampling_frequency
    seed = config.seed
    num_samples = int(round(config.duration_s * fs))
    probe = probe_from_config(config.probe, "data.probe")
    positions = np.asarray(probe.contact_positions, dtype=np.float64)

    units = place_units(config.units, positions, seed, where="data.units")
    shapes = draw_shapes(config.templates, units.cell_type, seed)
    rates = draw_rates(config.firing, units.cell_type, seed)
    samples, unit_indices = spike_trains(rates, num_samples, fs, config.firing.refractory_ms, seed)
    drift = make_drift(
        config.drift,
        units.positions_um[:, 1],
        num_samples,
        fs,
        seed,
        (float(positions[:, 1].min()), float(positions[:, 1].max())),
    )
    bank = build_templates(
        config.templates, units, shapes, positions, fs, displacement_ranges(drift, units.num_units)
    )
    displacement = np.zeros(samples.size) if drift is None else drift.at(samples, unit_indices)
    jitter = amplitude_jitter(config.templates.amplitude_jitter_sd, unit_indices, units.num_units, seed)
    noise = NoiseSource(config.noise, positions, fs, seed)
    traces = SyntheticTraces(num_samples, noise, bank, samples, unit_indices, displacement, jitter)

    std = float(config.noise.std_uv)
    unit_table = {
        "position_um": units.positions_um,
        "cell_type": units.cell_type,
        "peak_channel": bank.peak_channel,
        "peak_amplitude_uv": bank.peak_amplitude_uv,
        "snr": bank.peak_amplitude_uv / std if std > 0 else np.full(units.num_units, np.inf),
        "firing_rate_hz": rates,
        "trough_to_peak_ms": shapes.trough_to_peak_ms,
        "trough_sigma_ms": shapes.trough_sigma_ms,
    }
    metadata = {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "config": to_dict(config),
        "num_units": units.num_units,
        "refractory_samples": refractory_samples(config.firing.refractory_ms, fs),
        "template_trough_index": bank.trough_index,
        "template_num_samples": bank.num_samples,
    }
    recording = Recording(
        traces=traces,
        sampling_frequency=fs,
        channel_positions=positions,
        probe=probe,
        channel_ids=np.arange(positions.shape[0]),
        metadata=metadata,
    )
    truth = GroundTruth(
        samples=samples,
        unit_indices=unit_indices,
        unit_ids=np.arange(units.num_units),
        sampling_frequency=fs,
        unit_table=unit_table,
        drift=drift,
        spike_amplitude_scales=jitter,
    )
    return recording, truth


def write_synthetic(
    config: SynthesisConfig | Mapping | None,
    folder: str | os.PathLike,
    overwrite: bool = False,
    chunk_samples: int = 32768,
    progress: bool = True,
    dtype: str = "float32",
    gain_to_uv: float = 1.0,
    read_ahead: int = 2,
) -> Path:
    """Synthesise and stream into an esort_jax recording folder (atomic; bounded memory).

    `read_ahead` chunks are synthesised in the background while the previous ones are
    written (memory: about (read_ahead + 2) x chunk_samples x C x 4 bytes; 32768 samples was
    as fast as 65536 on the development machine, with a third less peak memory).
    """
    from esort_jax.io import write_recording_folder

    recording, truth = synthesize(config)
    recording.traces.read_ahead = read_ahead
    return write_recording_folder(
        folder,
        recording,
        truth,
        metadata={"seed": recording.metadata["seed"], "synthesis_config": recording.metadata["config"]},
        overwrite=overwrite,
        chunk_samples=chunk_samples,
        dtype=dtype,
        gain_to_uv=gain_to_uv,
        progress=progress,
    )
