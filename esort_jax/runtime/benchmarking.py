"""Measuring helpers shared by the benchmark entry point and scripts: the machine's dense
matmul peak measured in the same run, best-of timing on a quiet machine, peak memory of a
child process.

Figures are only meaningful relative to a reference measured in the same run (the machine may
be shared): every timing records the load average at the time it was taken.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Callable

__all__ = [
    "load_average", "cpu_idle_fraction", "wait_idle", "best_time", "matmul_peak_gflops", "paired_timings",
    "child_peak_rss_mb",
]


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def cpu_idle_fraction(interval: float = 0.5) -> float:
    """Fraction of CPU time idle over `interval` seconds (all cores, from /proc/stat)."""

    def read():
        with open("/proc/stat") as handle:
            values = [int(x) for x in handle.readline().split()[1:]]
        return values[3] + values[4], sum(values)

    idle0, total0 = read()
    time.sleep(interval)
    idle1, total1 = read()
    return (idle1 - idle0) / max(total1 - total0, 1)


def wait_idle(max_wait_s: float, threshold: float = 0.9) -> None:
    """Wait (at most max_wait_s) until the CPUs are mostly idle, so others' jobs don't skew a timing."""
    started = time.time()
    while time.time() - started < max_wait_s and cpu_idle_fraction() < threshold:
        pass


def best_time(fn: Callable[[], object], repeats: int = 3, max_wait_s: float = 0.0) -> float:
    """Best wall time of `repeats` calls after one warm-up call (compilation, first touch)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if max_wait_s:
            wait_idle(max_wait_s)
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def matmul_peak_gflops(repeats: int = 5, max_wait_s: float = 0.0) -> dict[str, float]:
    """JAX fp32 dense matmul GFLOP/s on this machine: a spatial-layer-like shape
    [4096, 6144] x [6144, 256] and a square 4096³; 'peak' is the larger."""
    import jax
    import jax.numpy as jnp

    key = jax.random.key(0)
    out = {}
    dot = jax.jit(jnp.dot)
    for m, k, n in [(4096, 6144, 256), (4096, 4096, 4096)]:
        a = jax.random.normal(key, (m, k), jnp.float32)
        b = jax.random.normal(key, (k, n), jnp.float32)
        seconds = best_time(lambda: dot(a, b).block_until_ready(), repeats, max_wait_s)
        out[f"{m}x{k}x{n}"] = 2.0 * m * k * n / seconds / 1e9
    out["peak"] = max(out.values())
    return out


def paired_timings(fn: Callable[[], object], repeats: int = 3, max_wait_s: float = 0.0) -> list[dict]:
    """Time `fn` `repeats` times (after a warm-up call), each run right after a measurement of
    the matmul peak, so every timing has a reference taken under the same machine conditions
    (on a shared machine the peak itself moves by tens of percent within minutes).

    Returns one dict per run: seconds, peak_gflops (the larger of the two matmul shapes of
    `matmul_peak_gflops`, best of 3 each), load (1-minute load average before the run)."""
    fn()
    runs = []
    for _ in range(repeats):
        if max_wait_s:
            wait_idle(max_wait_s)
        peak = matmul_peak_gflops(repeats=3)["peak"]
        load = load_average()[0]
        started = time.perf_counter()
        fn()
        runs.append({"seconds": time.perf_counter() - started, "peak_gflops": peak, "load": load})
    return runs


def child_peak_rss_mb(code: str, env: dict | None = None, timeout_s: float = 3600) -> dict:
    """Run `code` in a fresh Python process; it must print one line 'RESULT <json>'. Returns that
    dict plus 'peak_rss_mb' (the child's VmHWM, read by the child itself before exiting)."""
    wrapper = (
        code
        + "\nimport json as _j\n"
        + "_hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        + "RESULT['peak_rss_mb'] = _hwm / 1024\n"
        + "print('RESULT ' + _j.dumps(RESULT), flush=True)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=timeout_s,
        env={**os.environ, **(env or {})},
    )
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{completed.stderr[-3000:]}")
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"benchmark child printed no RESULT line:\n{completed.stdout[-2000:]}")
