"""Keep peak memory of long streaming loops independent of how long they run (glibc).

Streaming a recording allocates and frees the same few large buffers per chunk from several
threads (noise workers, read-ahead), plus per-unit waveform arrays of varying size. By default
glibc raises its mmap threshold each time it frees an mmapped block (up to 32 MiB), after which
those buffers come from per-thread arenas; their varying sizes fragment the arenas, and the
peak resident size creeps up chunk after chunk. Measured with
`benchmarks/bench_synthesis.py --durations 30 300 --slow-velocity 120 --chunk-samples 65536`
(384 channels, the same template bank at both lengths): peak RSS 449 → 577 MB by default, of
which ~30 MB is the longer recording's per-spike ground truth; 451 → 478 MB with the threshold
fixed at 8 MiB before synthesis starts (set later, once the arenas had been used, it did not
help: 452 → 548 MB). Blocks above the threshold are then mapped fresh (page faults): 7.0× real
time at 300 s against 8.0× by default in those single runs.

`fix_mmap_threshold` sets the threshold once, which also turns glibc's dynamic adjustment off;
it is process-wide and harmless together with `esort_jax.train.configure_host_allocator` (which
turns mmap off altogether for training). A no-op where glibc is not the allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3  # glibc malloc.h
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
