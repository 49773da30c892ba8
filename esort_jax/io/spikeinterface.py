"""Conversion between esort_jax's Recording/Sorting and SpikeInterface objects (0.105 API).

Both directions are lazy: a SpikeInterface recording made from ours reads through
`Recording.read` (or memory-maps the same file, when our traces are a memory map of a .npy or
raw file, giving a serialisable `BinaryRecordingExtractor`), and a Recording made from a
SpikeInterface one calls `get_traces` span by span.
"""

from __future__ import annotations

import functools
import mmap
import types
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from esort_jax.recording import ArrayTraces, Recording, Sorting

__all__ = [
    "to_spikeinterface_recording",
    "from_spikeinterface_recording",
    "to_spikeinterface_sorting",
    "from_spikeinterface_sorting",
    "SpikeInterfaceTraces",
    "SAVE_JOB_KWARGS",
]

# How to write a SpikeInterface recording to a binary folder (`si_recording.save(folder=...,
# **SAVE_JOB_KWARGS)`). SpikeInterface 0.105's binary writer runs a full `gc.collect()` after
# every chunk (1 s of data by default); in a process holding JAX and a large heap each collection
# costs ~0.3 s on this project's 2-core machine, so 40 s of 4 channels took ~25 s to write inside
# the test suite against ~2 s alone. Chunks of 128 MB bound the number of collections on small
# channel counts and keep memory bounded on any (384 float32 channels: ~2.6 s per chunk).
SAVE_JOB_KWARGS = types.MappingProxyType({"n_jobs": 1, "progress_bar": False, "chunk_memory": "128M"})


# --------------------------------------------------------------------------------------------
# recordings


def to_spikeinterface_recording(recording: Recording) -> Any:
    """A lazy SpikeInterface recording with the same traces (µV via gain/offset) and geometry.

    Traces memory-mapped from a file (our recording folder's traces.npy) become a
    `BinaryRecordingExtractor` on that file, which SpikeInterface can serialise and hand to
    worker processes; anything else becomes an in-memory extractor reading through
    `recording.read` (float32 µV, gain 1). The probe is attached when known, otherwise a dummy
    probe from the channel positions.
    """
    from spikeinterface.core import BinaryRecordingExtractor

    channel_ids = np.asarray(recording.channel_ids).tolist()
    memmap = _whole_file_memmap(recording.traces)
    if memmap is not None:
        si_recording = BinaryRecordingExtractor(
            file_paths=[str(memmap.filename)],
            sampling_frequency=recording.sampling_frequency,
            dtype=memmap.dtype.str,
            num_channels=recording.num_channels,
            channel_ids=channel_ids,
            file_offset=int(memmap.offset),
            gain_to_uV=_per_channel(recording.traces.gain_to_uv, recording.num_channels),
            offset_to_uV=_per_channel(recording.traces.offset_to_uv, recording.num_channels),
        )
    else:
        si_recording = _classes()[0](recording)
    _attach_geometry(si_recording, recording)
    return si_recording


def from_spikeinterface_recording(si_recording: Any, segment_index: int | None = None) -> Recording:
    """A lazy Recording over one segment of a SpikeInterface recording.

    Traces are read in µV (`return_in_uV=True`) when the recording has gains and offsets;
    otherwise its raw values are returned as float32 (SpikeInterface treats float recordings
    without gains as already in µV). A multi-segment recording needs `segment_index`.
    """
    segment_index = _segment(si_recording.get_num_segments(), segment_index, "recording")
    traces = SpikeInterfaceTraces(si_recording, segment_index)
    try:
        positions = np.asarray(si_recording.get_channel_locations(), dtype=np.float64)
        known = True
    except (ValueError, AssertionError):
        positions = np.full((si_recording.get_num_channels(), 2), np.nan)
        known = False
        warnings.warn(
            f"{type(si_recording).__name__}: the recording has no probe attached, so its "
            f"{si_recording.get_num_channels()} channels get no positions (NaN); attach a probeinterface "
            "file with recording.probe (load_recording(..., probe=...)) where geometry matters",
            stacklevel=2,
        )
    probe = None
    if si_recording.has_probe() and len(si_recording.get_probes()) == 1:
        probe = si_recording.get_probe()
    return Recording(
        traces=traces,
        sampling_frequency=si_recording.get_sampling_frequency(),
        channel_positions=positions[:, :2] if positions.shape[1] >= 2 else positions,
        probe=probe,
        channel_ids=np.asarray(si_recording.get_channel_ids()),
        metadata={
            "source": "spikeinterface",
            "spikeinterface_class": type(si_recording).__name__,
            "segment_index": segment_index,
            "num_segments": si_recording.get_num_segments(),
            "traces_in_uv": traces.in_uv,
            "channel_positions_known": known,
        },
    )


class SpikeInterfaceTraces:
    """`TraceSource` over one segment of a SpikeInterface recording (float32; µV if scaleable)."""

    def __init__(self, si_recording: Any, segment_index: int = 0):
        self.recording = si_recording
        self.segment_index = segment_index
        self.in_uv = bool(si_recording.has_scaleable_traces())
        self._shape = (
            int(si_recording.get_num_samples(segment_index=segment_index)),
            int(si_recording.get_num_channels()),
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def read(self, start: int, stop: int) -> np.ndarray:
        traces = self.recording.get_traces(
            segment_index=self.segment_index,
            start_frame=start,
            end_frame=stop,
            return_in_uV=self.in_uv,
        )
        return np.array(traces, dtype=np.float32, copy=True)


def _whole_file_memmap(traces: Any) -> np.memmap | None:
    """The memmap behind `traces` if it maps a whole C-ordered [T, C] array from a file."""
    if not isinstance(traces, ArrayTraces):
        return None
    array = traces.array
    if not isinstance(array, np.memmap) or array.filename is None:
        return None
    if not isinstance(array.base, mmap.mmap) or not array.flags.c_contiguous or array.ndim != 2:
        return None  # a slice or view of a mapping: its offset no longer describes the data
    return array


def _per_channel(value: np.ndarray, num_channels: int) -> float | list[float]:
    value = np.asarray(value, dtype=np.float64)
    return float(value) if value.ndim == 0 else np.broadcast_to(value, (num_channels,)).tolist()


def _attach_geometry(si_recording: Any, recording: Recording) -> None:
    probe = recording.probe
    count = getattr(probe, "get_contact_count", lambda: -1)() if probe is not None else -1
    if count == recording.num_channels:
        probe = probe.copy() if probe.device_channel_indices is None else probe
        if probe.device_channel_indices is None:
            probe.set_device_channel_indices(np.arange(recording.num_channels))
        try:
            si_recording.set_probe(probe)
            return
        except Exception:  # an unusual probe SpikeInterface rejects: fall back to positions
            pass
    if np.all(np.isfinite(recording.channel_positions)):
        si_recording.set_dummy_probe_from_locations(recording.channel_positions)


@functools.cache
def _classes():
    """SpikeInterface subclasses, defined on first use so importing esort_jax.io stays cheap."""
    from spikeinterface.core import BaseRecording, BaseRecordingSegment

    class EsortRecording(BaseRecording):
        """An esort_jax Recording seen by SpikeInterface (in memory, float32 µV)."""

        def __init__(self, recording: Recording):
            channel_ids = np.asarray(recording.channel_ids).tolist()
            BaseRecording.__init__(self, recording.sampling_frequency, channel_ids, "float32")
            self._serializability["json"] = False
            self._serializability["pickle"] = False
            self.add_recording_segment(EsortRecordingSegment(recording))
            self.set_channel_gains(1.0)
            self.set_channel_offsets(0.0)
            self._kwargs = {"recording": recording}

    class EsortRecordingSegment(BaseRecordingSegment):
        def __init__(self, recording: Recording):
            BaseRecordingSegment.__init__(
                self, sampling_frequency=recording.sampling_frequency, t_start=None
            )
            self._recording = recording

        def get_num_samples(self) -> int:
            return self._recording.num_samples

        def get_traces(self, start_frame=None, end_frame=None, channel_indices=None) -> np.ndarray:
            start = 0 if start_frame is None else int(start_frame)
            stop = self._recording.num_samples if end_frame is None else int(end_frame)
            traces = self._recording.read(start, stop)
            return traces if channel_indices is None else traces[:, channel_indices]

    return EsortRecording, EsortRecordingSegment


# --------------------------------------------------------------------------------------------
# sortings


def to_spikeinterface_sorting(sorting: Sorting | Sequence[Sorting]) -> Any:
    """A SpikeInterface `NumpySorting` with the same spike samples and unit ids: one segment, or
    one per Sorting of a sequence (e.g. stretches with their own sample numbering; empty ones
    kept), which must share unit ids and sampling rate."""
    from spikeinterface.core import NumpySorting
    from spikeinterface.core.base import minimum_spike_dtype

    if not isinstance(sorting, Sorting):
        segments = list(sorting)
        if not segments:
            raise ValueError("no segments given")
        first = segments[0]
        for other in segments[1:]:
            if not np.array_equal(np.asarray(other.unit_ids), np.asarray(first.unit_ids)) or \
                    other.sampling_frequency != first.sampling_frequency:
                raise ValueError("segments must share unit ids and sampling frequency")
        ids = np.asarray(first.unit_ids)
        return NumpySorting.from_samples_and_labels([np.asarray(s.samples) for s in segments],
                                                    [ids[s.unit_indices] for s in segments],
                                                    first.sampling_frequency, unit_ids=ids)

    # The spike vector directly (what NumpySorting.from_samples_and_labels builds, without its
    # per-unit label comparisons): our spikes are already ordered by (sample, unit index).
    spikes = np.zeros(sorting.num_spikes, dtype=minimum_spike_dtype)
    spikes["sample_index"] = sorting.samples
    spikes["unit_index"] = sorting.unit_indices
    return NumpySorting(spikes, sorting.sampling_frequency, np.asarray(sorting.unit_ids))


def from_spikeinterface_sorting(si_sorting: Any, segment_index: int | None = None) -> Sorting:
    """A Sorting with the spikes of one segment of a SpikeInterface sorting (unit ids kept)."""
    segment_index = _segment(si_sorting.get_num_segments(), segment_index, "sorting")
    spikes = si_sorting.to_spike_vector()
    spikes = spikes[spikes["segment_index"] == segment_index]
    return Sorting(
        samples=spikes["sample_index"],
        unit_indices=spikes["unit_index"],
        unit_ids=np.asarray(si_sorting.unit_ids),
        sampling_frequency=si_sorting.get_sampling_frequency(),
    )


def _segment(num_segments: int, segment_index: int | None, what: str) -> int:
    if segment_index is None:
        if num_segments != 1:
            raise ValueError(
                f"the SpikeInterface {what} has {num_segments} segments; pass segment_index "
                f"(0..{num_segments - 1}) to choose one"
            )
        return 0
    if not 0 <= segment_index < num_segments:
        raise ValueError(
            f"segment_index {segment_index} is out of range for {num_segments} segment(s)"
        )
    return segment_index
