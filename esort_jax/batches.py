"""Feeding windows to a jitted step: batches cut from the traces by start sample, never stored.

A window set (esort_jax.windows) is start samples plus labels. Each batch is gathered when it is
needed, on one of two paths:

- resident: the span of the recording the windows touch sits on every device (`DeviceTraces`,
  replicated) and the jitted step cuts its batch itself (`take_batch` → `gather_device`: one row
  gather, no host work per step);
- host: a background thread (esort_jax.runtime.prefetch) gathers each batch from the
  (memory-mapped) recording (`gather_host`) and puts it on the devices, a few batches ahead;
  with several processes (esort_jax.runtime.distributed) each gathers only the windows of the
  global batch that its own devices hold.

`plan_residency` picks the path per window set within a per-device byte budget; `WindowFeeder`
holds one set's data for either path. Windows go to the step time-major, [W, B, C] (layout
'WBC'): the layout the training formulation's first layer consumes (esort_jax.fast.training),
which XLA writes directly while gathering rows instead of transposing the batch afterwards.

Shuffling: `epoch_order(key, epoch, ...)` is a permutation keyed by fold_in(key, epoch), wrapped
to a whole number of batches, so the data order depends only on (seed, epoch).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from esort_jax.recording import ArrayTraces, Recording
from esort_jax.runtime.prefetch import Prefetcher
from esort_jax.windows import WindowSet

__all__ = [
    "DeviceTraces",
    "span_bytes",
    "covered_spans",
    "first_nonfinite",
    "gather_device",
    "gather_host",
    "steps_per_epoch",
    "epoch_order",
    "plan_residency",
    "WindowFeeder",
    "batch_indices",
    "take_batch",
    "window_sharding",
]


@dataclasses.dataclass(frozen=True, eq=False)
class DeviceTraces:
    """A span of the recording resident on device(s): `traces` [stop - start, C] float32.

    With a replicated sharding every device holds the span, so a batch sharded over devices
    gathers its windows locally.
    """

    traces: jax.Array
    start: int

    @classmethod
    def load(
        cls,
        recording: Recording,
        start: int,
        stop: int,
        sharding: jax.sharding.Sharding | None = None,
        chunk_samples: int = 1 << 16,
    ) -> "DeviceTraces":
        """Read samples [start, stop) in chunks into one host buffer and put it on device."""
        host = np.empty((stop - start, recording.num_channels), dtype=np.float32)
        for chunk_start, block in recording.iter_chunks(chunk_samples, start, stop):
            host[chunk_start - start : chunk_start - start + block.shape[0]] = block
        traces = jax.device_put(host, sharding) if sharding is not None else jnp.asarray(host)
        return cls(traces=traces, start=start)


def span_bytes(span: tuple[int, int], num_channels: int) -> int:
    """Bytes of float32 traces for a span (what `DeviceTraces.load` would hold per device)."""
    return max(span[1] - span[0], 0) * num_channels * 4


def covered_spans(windows: WindowSet) -> list[tuple[int, int]]:
    """The disjoint sample spans [start, stop) the windows read, in order (overlapping and
    touching windows merged)."""
    if not len(windows):
        return []
    starts = np.sort(windows.starts)
    breaks = np.flatnonzero(starts[1:] > starts[:-1] + windows.window) + 1
    firsts, lasts = starts[np.r_[0, breaks]], starts[np.r_[breaks - 1, starts.size - 1]]
    return [(int(a), int(b) + windows.window) for a, b in zip(firsts, lasts)]


def first_nonfinite(
    recording: Recording, windows: WindowSet, chunk_samples: int = 1 << 16
) -> tuple[int, int, float] | None:
    """(sample, channel, value) of the first NaN or inf among the samples the windows read (the
    earliest sample, then the lowest channel), or None when all are finite. Reads those samples
    once, in chunks."""
    for start, stop in covered_spans(windows):
        for chunk_start, block in recording.iter_chunks(chunk_samples, start, stop):
            finite = np.isfinite(block)
            if not finite.all():
                row, channel = (int(v) for v in np.argwhere(~finite)[0])
                return chunk_start + row, channel, float(block[row, channel])
    return None


def gather_device(traces_TxC: jax.Array, starts_B: jax.Array, window: int, layout: str = "BWC") -> jax.Array:
    """Windows cut from device traces at `starts_B` (relative to the traces' first sample;
    they must lie in [0, T - W]). Jit-friendly: one row gather.

    layout 'BWC' gives [B, W, C]; 'WBC' gives [W, B, C] -- the layout the training step's first
    layer consumes (see the module doc).
    """
    rows_WxB = jnp.arange(window, dtype=starts_B.dtype)[:, None] + starts_B[None, :]
    x_WxBxC = jnp.take(traces_TxC, rows_WxB, axis=0, mode="clip")
    if layout == "WBC":
        return x_WxBxC
    if layout != "BWC":
        raise ValueError(f"layout must be 'BWC' or 'WBC'; got {layout!r}")
    return jnp.transpose(x_WxBxC, (1, 0, 2))


def gather_host(recording: Recording, starts: np.ndarray, window: int, layout: str = "BWC") -> np.ndarray:
    """Windows float32 µV read from the recording at absolute `starts`: [B, W, C] (layout
    'BWC') or [W, B, C] ('WBC').

    Array-backed traces (np.memmap, np.ndarray) are read with one fancy-indexing call; other
    trace sources window by window through `recording.read`.
    """
    if layout not in ("BWC", "WBC"):
        raise ValueError(f"layout must be 'BWC' or 'WBC'; got {layout!r}")
    starts = np.asarray(starts, dtype=np.int64)
    source = recording.traces
    if isinstance(source, ArrayTraces) and isinstance(source.array, np.ndarray):
        offsets = np.arange(window, dtype=np.int64)
        rows = offsets[:, None] + starts[None, :] if layout == "WBC" else starts[:, None] + offsets[None, :]
        raw = source.array[rows]
        gain, offset = source.gain_to_uv, source.offset_to_uv
        if raw.dtype == np.float32 and np.all(gain == 1.0) and np.all(offset == 0.0):
            return np.ascontiguousarray(raw)
        return (raw.astype(np.float32) * gain + offset).astype(np.float32)
    out = np.empty((starts.size, window, recording.num_channels), dtype=np.float32)
    for b, start in enumerate(starts.tolist()):
        out[b] = recording.read(start, start + window)
    return np.ascontiguousarray(out.transpose(1, 0, 2)) if layout == "WBC" else out


def steps_per_epoch(num_windows: int, batch_size: int) -> int:
    """ceil(M / B): every window is seen at least once per epoch (see `epoch_order`)."""
    return -(-num_windows // batch_size)


def epoch_order(key: jax.Array, epoch: int, num_windows: int, batch_size: int) -> jax.Array:
    """[steps · B] window indices for one epoch: a permutation keyed by fold_in(key, epoch),
    wrapped around to fill the last batch (so shapes never change and every window appears at
    least once; the first few of the permutation appear twice when B does not divide M)."""
    steps = steps_per_epoch(num_windows, batch_size)
    permutation = jax.random.permutation(jax.random.fold_in(key, epoch), num_windows)
    return permutation[jnp.arange(steps * batch_size) % num_windows]


def plan_residency(
    sets: list[WindowSet],
    num_channels: int,
    *,
    data_on_device: Literal["auto", "always", "never"],
    budget_bytes: int,
) -> list[bool]:
    """Which window sets get their span resident on device: all ('always'), none ('never'), or
    in order while their spans fit `budget_bytes` per device ('auto'; empty sets never)."""
    plan = []
    for windows in sets:
        need = span_bytes(windows.span(), num_channels)
        if data_on_device == "always":
            plan.append(True)
        elif data_on_device == "never" or not len(windows):
            plan.append(False)
        else:
            fits = need <= budget_bytes
            budget_bytes -= need if fits else 0
            plan.append(fits)
    return plan


def window_sharding(mesh: Mesh) -> NamedSharding:
    """Windows [W, B, C] split over the devices along the batch axis."""
    return NamedSharding(mesh, PartitionSpec(None, "data"))


def batch_indices(order: jax.Array, step, batch_size: int, mesh: Mesh) -> jax.Array:
    """Window indices [B] of batch `step` of the epoch order, split over the devices (in a jit)."""
    idx_B = jax.lax.dynamic_slice_in_dim(order, step * batch_size, batch_size)
    return jax.lax.with_sharding_constraint(idx_B, NamedSharding(mesh, PartitionSpec("data")))


def take_batch(data: dict, order: jax.Array, step, batch_size: int, window: int, mesh: Mesh):
    """Batch `step` of the epoch order cut on device from resident data (`WindowFeeder.data`):
    (windows [W, B, C], labels [B, N]), split over the devices (in a jit)."""
    idx_B = batch_indices(order, step, batch_size, mesh)
    x_WxBxC = gather_device(data["traces"], data["starts"][idx_B], window, layout="WBC")
    x_WxBxC = jax.lax.with_sharding_constraint(x_WxBxC, window_sharding(mesh))
    return x_WxBxC, data["labels"][idx_B]


class WindowFeeder:
    """Batches of one WindowSet, resident on device or gathered on the host.

    Resident: `data` = {"traces" [T, C] (the set's span), "starts" [M] (relative to the span),
    "labels" [M, N]}, replicated, for `take_batch` inside a jitted step. Host: `host_batches(order)`.
    """

    def __init__(self, recording: Recording, windows: WindowSet, mesh: Mesh, *, batch_size: int,
                 resident: bool, prefetch: int):
        self.windows = windows
        self.recording = recording
        self.batch_size = batch_size
        self.prefetch = prefetch
        self.resident = resident
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
        self.window_sharding = window_sharding(mesh)
        self.steps = steps_per_epoch(len(windows), batch_size)
        self.data = None
        if resident:
            start, stop = windows.span()
            traces = DeviceTraces.load(recording, start, stop, self.replicated)
            self.data = {
                "traces": traces.traces,
                "starts": jax.device_put((windows.starts - start).astype(np.int32), self.replicated),
                "labels": jax.device_put(windows.labels, self.replicated),
            }

    def host_batches(self, order: np.ndarray) -> Prefetcher:
        """(windows [W, B, C], labels [B, N]) device batches following `order` (len(order) / B
        of them), gathered by a background thread `prefetch` batches ahead (host path)."""
        B = self.batch_size

        def produce(i):
            idx = order[i * B : (i + 1) * B]
            if jax.process_count() > 1:
                return self._process_share(idx)
            x = gather_host(self.recording, self.windows.starts[idx], self.windows.window, layout="WBC")
            y = self.windows.labels[idx]
            return jax.device_put(x, self.window_sharding), jax.device_put(y, self.batch_sharding)

        return Prefetcher(produce, len(order) // B, depth=self.prefetch)

    def _process_share(self, idx: np.ndarray) -> tuple[jax.Array, jax.Array]:
        """Batch `idx` as global arrays of which this process gathers only the windows its own
        devices hold (several processes: esort_jax.runtime.distributed)."""
        from esort_jax.runtime.distributed import local_rows

        shape = (self.windows.window, idx.size, self.recording.num_channels)
        own = idx[local_rows(self.window_sharding, shape, axis=1)]
        x = gather_host(self.recording, self.windows.starts[own], self.windows.window, layout="WBC")
        return (jax.make_array_from_process_local_data(self.window_sharding, x, shape),
                jax.make_array_from_process_local_data(self.batch_sharding, self.windows.labels[own],
                                                       (idx.size, self.windows.num_units)))
