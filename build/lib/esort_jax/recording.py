"""The data model: a lazily readable multi-channel recording and its spike trains.

`Recording` holds traces [T, C] behind a `TraceSource` (memory map, HDF5 dataset, a
SpikeInterface recording, or a synthesiser that computes any span on demand), the sampling
rate and the channel geometry. Nothing here reads the whole recording: `read(start, stop)`
returns float32 microvolts for one span.

`Sorting` is a set of spike trains (sample indices + unit labels); `GroundTruth` adds what a
simulator knows about each unit (position, type, peak channel, amplitude, SNR) and the drift.
Spike arrays are sorted by sample, then by unit index; `unit_indices` index `unit_ids`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "TraceSource",
    "ArrayTraces",
    "Recording",
    "Sorting",
    "GroundTruth",
    "Drift",
    "UNIT_TABLE_COLUMNS",
]


@runtime_checkable
class TraceSource(Protocol):
    """Anything that can hand out a span of traces as float32 µV, time-major."""

    @property
    def shape(self) -> tuple[int, int]:  # (num_samples, num_channels)
        ...

    def read(self, start: int, stop: int) -> np.ndarray:  # float32 [stop - start, C], µV
        ...


class ArrayTraces:
    """Traces stored in an array-like [T, C] (np.ndarray, np.memmap, h5py.Dataset).

    Values are converted to µV as `raw * gain_to_uv + offset_to_uv` (scalars or per-channel).
    """

    def __init__(self, array: Any, gain_to_uv: Any = 1.0, offset_to_uv: Any = 0.0):
        if len(array.shape) != 2:
            raise ValueError(f"traces must be 2-D [samples, channels]; got shape {tuple(array.shape)}")
        self.array = array
        self.gain_to_uv = np.asarray(gain_to_uv, dtype=np.float32)
        self.offset_to_uv = np.asarray(offset_to_uv, dtype=np.float32)
        self._identity = (
            np.dtype(array.dtype) == np.float32
            and np.all(self.gain_to_uv == 1.0)
            and np.all(self.offset_to_uv == 0.0)
        )

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.array.shape[0]), int(self.array.shape[1]))

    def read(self, start: int, stop: int) -> np.ndarray:
        raw = np.asarray(self.array[start:stop])
        if self._identity:
            return np.array(raw, dtype=np.float32, copy=True)
        return (raw.astype(np.float32) * self.gain_to_uv + self.offset_to_uv).astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class Recording:
    """Multi-channel extracellular traces with their geometry.

    Attributes:
      traces: a `TraceSource` giving float32 µV spans of shape [T, C].
      sampling_frequency: Hz.
      channel_positions: [C, 2] float µm, (x across the shank, y = depth along it).
      probe: a `probeinterface.Probe` describing the sites (or None when unknown).
      channel_ids: [C] identifiers as the source named them (defaults to 0..C-1).
      metadata: free-form provenance (generating config, seed, source file, ...).
    """

    traces: TraceSource
    sampling_frequency: float
    channel_positions: np.ndarray
    probe: Any = None
    channel_ids: np.ndarray | None = None
    metadata: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        positions = np.asarray(self.channel_positions, dtype=np.float64)
        if positions.ndim != 2 or positions.shape[1] not in (2, 3):
            raise ValueError(f"channel_positions must be [C, 2]; got shape {positions.shape}")
        positions = positions[:, -2:] if positions.shape[1] == 3 else positions
        object.__setattr__(self, "channel_positions", positions)
        num_samples, num_channels = self.traces.shape
        if positions.shape[0] != num_channels:
            raise ValueError(
                f"traces have {num_channels} channels but channel_positions has {positions.shape[0]} rows"
            )
        if not (np.isfinite(self.sampling_frequency) and self.sampling_frequency > 0):
            raise ValueError(f"sampling_frequency must be > 0 Hz; got {self.sampling_frequency}")
        object.__setattr__(self, "sampling_frequency", float(self.sampling_frequency))
        ids = np.arange(num_channels) if self.channel_ids is None else np.asarray(self.channel_ids)
        if ids.shape != (num_channels,):
            raise ValueError(f"channel_ids must have {num_channels} entries; got shape {ids.shape}")
        object.__setattr__(self, "channel_ids", ids)

    @property
    def num_samples(self) -> int:
        return self.traces.shape[0]

    @property
    def num_channels(self) -> int:
        return self.traces.shape[1]

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sampling_frequency

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """float32 µV traces [stop - start, C] for samples [start, stop)."""
        stop = self.num_samples if stop is None else stop
        if not (0 <= start <= stop <= self.num_samples):
            raise IndexError(
                f"span [{start}, {stop}) is outside the recording's {self.num_samples} samples"
            )
        return self.traces.read(start, stop)

    def iter_chunks(self, chunk_samples: int, start: int = 0, stop: int | None = None):
        """Yield (chunk_start, traces) over [start, stop) in chunks of `chunk_samples`."""
        stop = self.num_samples if stop is None else stop
        for chunk_start in range(start, stop, chunk_samples):
            chunk_stop = min(chunk_start + chunk_samples, stop)
            yield chunk_start, self.read(chunk_start, chunk_stop)


@dataclasses.dataclass(frozen=True, eq=False)
class Sorting:
    """Spike trains: one entry per spike, sorted by (sample, unit index).

    Attributes:
      samples: [S] int64 sample index of each spike (the waveform's trough on its peak channel
        for ground truth).
      unit_indices: [S] int64 index into `unit_ids`.
      unit_ids: [N] unit identifiers (int or str).
      sampling_frequency: Hz.
    """

    samples: np.ndarray
    unit_indices: np.ndarray
    unit_ids: np.ndarray
    sampling_frequency: float

    def __post_init__(self):
        samples = np.asarray(self.samples, dtype=np.int64).reshape(-1)
        unit_indices = np.asarray(self.unit_indices, dtype=np.int64).reshape(-1)
        unit_ids = np.asarray(self.unit_ids)
        if samples.shape != unit_indices.shape:
            raise ValueError(
                f"samples ({samples.shape[0]}) and unit_indices ({unit_indices.shape[0]}) differ in length"
            )
        if unit_ids.ndim != 1:
            raise ValueError(f"unit_ids must be 1-D; got shape {unit_ids.shape}")
        if unit_indices.size and (unit_indices.min() < 0 or unit_indices.max() >= unit_ids.size):
            raise ValueError(
                f"unit_indices must lie in [0, {unit_ids.size}); got [{unit_indices.min()}, {unit_indices.max()}]"
            )
        order = np.lexsort((unit_indices, samples))
        if not np.all(order == np.arange(order.size)):
            samples, unit_indices = samples[order], unit_indices[order]
        object.__setattr__(self, "samples", samples)
        object.__setattr__(self, "unit_indices", unit_indices)
        object.__setattr__(self, "unit_ids", unit_ids)
        object.__setattr__(self, "sampling_frequency", float(self.sampling_frequency))

    @property
    def num_units(self) -> int:
        return int(self.unit_ids.size)

    @property
    def num_spikes(self) -> int:
        return int(self.samples.size)

    def spike_counts(self) -> np.ndarray:
        """[N] number of spikes of each unit."""
        return np.bincount(self.unit_indices, minlength=self.num_units)

    def unit_samples(self, unit_index: int) -> np.ndarray:
        """Sorted sample indices of one unit (by index into `unit_ids`)."""
        return self.samples[self.unit_indices == unit_index]

    def in_span(self, start: int, stop: int) -> "Sorting":
        """The spikes with start <= sample < stop, samples kept absolute."""
        return self.select_spikes((self.samples >= start) & (self.samples < stop))

    def select_spikes(self, keep: np.ndarray) -> "Sorting":
        """A copy keeping the spikes where the boolean mask `keep` [S] is true (units unchanged)."""
        return dataclasses.replace(self, samples=self.samples[keep], unit_indices=self.unit_indices[keep])

    def select_units(self, unit_indices: np.ndarray) -> "Sorting":
        """A plain Sorting of only the units at `unit_indices` (in that order) and their spikes."""
        unit_indices = np.asarray(unit_indices, dtype=np.int64).reshape(-1)
        new_index = np.full(self.num_units, -1, dtype=np.int64)
        new_index[unit_indices] = np.arange(unit_indices.size)
        keep = new_index[self.unit_indices] >= 0
        return Sorting(
            samples=self.samples[keep],
            unit_indices=new_index[self.unit_indices[keep]],
            unit_ids=self.unit_ids[unit_indices],
            sampling_frequency=self.sampling_frequency,
        )

    def unit_index_of(self, ids: Any) -> np.ndarray:
        """Positions of the unit ids `ids` in `unit_ids`; KeyError naming the ids that are absent."""
        ids = np.asarray(ids).reshape(-1)
        position = {_id_key(u): k for k, u in enumerate(self.unit_ids.tolist())}
        missing = [u for u in ids.tolist() if _id_key(u) not in position]
        if missing:
            raise KeyError(f"unit ids {missing[:10]}{' ...' if len(missing) > 10 else ''} are not among "
                           f"this sorting's {self.num_units} units")
        return np.array([position[_id_key(u)] for u in ids.tolist()], dtype=np.int64)

    @classmethod
    def from_unit_dict(cls, trains: dict, sampling_frequency: float) -> "Sorting":
        """Build from {unit_id: sample indices}."""
        unit_ids = np.asarray(list(trains.keys()))
        samples = [np.asarray(trains[u], dtype=np.int64).reshape(-1) for u in trains]
        unit_indices = [np.full(s.size, i, dtype=np.int64) for i, s in enumerate(samples)]
        return cls(
            samples=np.concatenate(samples) if samples else np.zeros(0, np.int64),
            unit_indices=np.concatenate(unit_indices) if unit_indices else np.zeros(0, np.int64),
            unit_ids=unit_ids,
            sampling_frequency=sampling_frequency,
        )


# Columns of GroundTruth.unit_table; each an array with one row per unit.
UNIT_TABLE_COLUMNS = {
    "position_um": "[N, 3] neuron position (x across the shank, y depth, z distance from the probe plane)",
    "cell_type": "[N] 'exc' or 'inh'",
    "peak_channel": "[N] index of the channel with the largest template amplitude (at zero drift)",
    "peak_amplitude_uv": "[N] largest |template| on the peak channel, µV",
    "snr": "[N] peak_amplitude_uv / noise std on the peak channel",
    "firing_rate_hz": "[N] configured mean firing rate",
}


@dataclasses.dataclass(frozen=True, eq=False)
class Drift:
    """Displacement of each unit along the probe's depth axis over time.

    Attributes:
      samples: [D] sample indices at which the displacement is given (increasing).
      displacement_um: [D, N] depth displacement of each unit, µm (rigid drift: equal columns).
    Between grid points the displacement is linear in time.
    """

    samples: np.ndarray
    displacement_um: np.ndarray

    def at(self, samples: np.ndarray, unit_indices: np.ndarray) -> np.ndarray:
        """Displacement (µm) of the given units at the given samples (elementwise)."""
        samples = np.asarray(samples, dtype=np.float64)
        position = np.interp(samples, self.samples, np.arange(self.samples.size, dtype=np.float64))
        left = np.clip(np.floor(position).astype(np.int64), 0, max(self.samples.size - 2, 0))
        frac = position - left
        right = np.minimum(left + 1, self.samples.size - 1)
        d = self.displacement_um
        return (1.0 - frac) * d[left, unit_indices] + frac * d[right, unit_indices]


@dataclasses.dataclass(frozen=True, eq=False)
class GroundTruth(Sorting):
    """A `Sorting` known to be true, with what the simulator knows about each unit.

    Attributes:
      unit_table: dict of per-unit arrays (see UNIT_TABLE_COLUMNS); columns may be missing when
        the source does not provide them (e.g. a MEArec file without annotations).
      drift: per-unit displacement over time, or None for a static recording.
      spike_amplitude_scales: [S] per-spike amplitude factor the simulator applied (or None).
    """

    unit_table: dict = dataclasses.field(default_factory=dict)
    drift: Drift | None = None
    spike_amplitude_scales: np.ndarray | None = None

    def __post_init__(self):
        scales = self.spike_amplitude_scales
        order = np.lexsort((np.asarray(self.unit_indices), np.asarray(self.samples)))
        super().__post_init__()
        if scales is not None:
            scales = np.asarray(scales, dtype=np.float32).reshape(-1)
            if scales.shape != self.samples.shape:
                raise ValueError("spike_amplitude_scales must have one entry per spike")
            object.__setattr__(self, "spike_amplitude_scales", scales[order])
        for name, column in self.unit_table.items():
            if len(column) != self.num_units:
                raise ValueError(
                    f"unit_table column {name!r} has {len(column)} rows; expected {self.num_units}"
                )

    def select_spikes(self, keep: np.ndarray) -> "GroundTruth":
        scales = None if self.spike_amplitude_scales is None else self.spike_amplitude_scales[keep]
        return dataclasses.replace(
            self,
            samples=self.samples[keep],
            unit_indices=self.unit_indices[keep],
            spike_amplitude_scales=scales,
        )

    def spike_displacement_um(self) -> np.ndarray:
        """[S] depth displacement of each spike's unit at the spike time (zeros if static)."""
        if self.drift is None:
            return np.zeros(self.num_spikes)
        return self.drift.at(self.samples, self.unit_indices)


def _id_key(unit_id: Any) -> Any:
    """A unit id as a hashable key: numpy scalars as Python values (ids 3 and np.int64(3) match)."""
    return unit_id.item() if isinstance(unit_id, np.generic) else unit_id
