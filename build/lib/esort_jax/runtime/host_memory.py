"""glibc malloc settings, one per kind of workload; entry points call them explicitly, before
the work starts (nothing happens at import). Both are no-ops where glibc is not the allocator.

`configure_host_allocator` (XLA on CPU: training, inference). XLA on CPU allocates each step's
temporaries (~240 MB for a paper-sized training batch) afresh; glibc serves allocations that
large with mmap and returns them with munmap, so every step page-faults all of it again
(~60 000 faults per step, 30-40 % of the step time; benchmarks/bench_train.py). With one arena,
no mmap and no trimming the memory stays mapped and is reused: zero faults per step, at the cost
of keeping the peak heap (fine for a training run).

`fix_mmap_threshold` (synthesis): keep peak memory of long streaming loops independent of how
long they run. Streaming a recording allocates and frees the same few large buffers per chunk
from several threads (noise workers, read-ahead), plus per-unit waveform arrays of varying size.
By default glibc raises its mmap threshold each time it frees an mmapped block (up to 32 MiB),
after which those buffers come from per-thread arenas; their varying sizes fragment the arenas,
and the peak resident size creeps up chunk after chunk. Measured with
`benchmarks/bench_synthesis.py --durations 30 300 --slow-velocity 120 --chunk-samples 65536`
(384 channels, the same template bank at both lengths): peak RSS 449 → 577 MB by default, of
which ~30 MB is the longer recording's per-spike ground truth; 451 → 478 MB with the threshold
fixed at 8 MiB before synthesis starts (set later, once the arenas had been used, it did not
help: 452 → 548 MB). Blocks above the threshold are then mapped fresh (page faults): 7.0× real
time at 300 s against 8.0× by default in those single runs. Setting the threshold once also
turns glibc's dynamic adjustment off; it is process-wide and harmless together with
`configure_host_allocator` (which turns mmap off altogether).

Two helpers of streaming reads (esort_jax.infer): `aligned_zeros` (host buffers that
jax.device_put can alias on CPU) and `drop_mapped_pages` (release the pages of a memory-mapped
recording once read, so a pass over it keeps a bounded resident set).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap

import numpy as np

__all__ = ["configure_host_allocator", "fix_mmap_threshold", "aligned_zeros", "drop_mapped_pages"]

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -3, -4, -8  # glibc malloc.h
DEFAULT_THRESHOLD_BYTES = 8 << 20


@functools.lru_cache(maxsize=1)
def _mallopt():
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


@functools.lru_cache(maxsize=4)
def fix_mmap_threshold(threshold_bytes: int = DEFAULT_THRESHOLD_BYTES) -> bool:
    """Serve allocations of at least `threshold_bytes` with mmap, always; True if set."""
    mallopt = _mallopt()
    return bool(mallopt is not None and mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)) == 1)


def configure_host_allocator() -> bool:
    """Make glibc malloc keep and reuse freed memory (one arena, no mmap, no trimming); True if set.

    Must run before JAX starts its CPU backend (before the first computation); it returns
    False and changes nothing when not on glibc. Equivalent environment for launchers:
    MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647.
    """
    mallopt = _mallopt()
    if mallopt is None:
        return False
    ok = mallopt(M_ARENA_MAX, 1) == 1
    ok &= mallopt(M_MMAP_MAX, 0) == 1
    ok &= mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return bool(ok)


def aligned_zeros(shape: tuple, dtype=np.float32, alignment: int = 64) -> np.ndarray:
    """Zeros whose data is `alignment`-byte aligned: jax.device_put then aliases it on CPU
    instead of copying (the array must not be written to afterwards)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(nbytes + alignment, np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def drop_mapped_pages(array, start: int, stop: int) -> None:
    """Release the pages of rows [start, stop) of `array` if it is a read-only np.memmap (e.g.
    np.load(..., mmap_mode='r')). They are clean file pages, re-read on demand; without this the
    resident set of a pass over a recording grows by the bytes read, i.e. with the length of the
    recording. Best effort: anything else is left alone."""
    mapping = getattr(array, "_mmap", None)
    if (
        not isinstance(array, np.memmap) or getattr(array, "mode", None) != "r"
        or not isinstance(mapping, mmap.mmap) or not hasattr(mapping, "madvise")
        or not array.flags.c_contiguous or stop <= start
    ):
        return
    try:
        base = np.frombuffer(mapping, np.uint8).ctypes.data
        row_bytes = array.strides[0]
        first = array.ctypes.data - base + start * row_bytes
        last = min(array.ctypes.data - base + stop * row_bytes, len(mapping))
        first -= first % mmap.PAGESIZE
        if last > first:
            mapping.madvise(mmap.MADV_DONTNEED, first, last - first)
    except (ValueError, OSError, AttributeError):
        pass
