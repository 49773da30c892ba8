"""Measuring helpers shared by every benchmark (experiments/benchmark.py, benchmarks/*.py): the
machine's dense matmul peak measured in the same run, timings over repeated runs on a quiet
machine, their median and range, ratios between paired runs, peak memory of a child process,
and a description of the machine.

The project's rules for a reported figure: the median and the range over runs, never the best
run alone; a speed is only meaningful relative to a reference measured in the same run (the
machine may be shared), so every timing records the load average at the time it was taken and
ratios pair runs measured under the same conditions. A peak (the matmul rate) is the one
best-of: it measures what the machine can do, not how long a workload takes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Mapping, Sequence

__all__ = [
    "load_average", "cpu_idle_fraction", "wait_idle", "timings", "best_time", "Spread", "spread",
    "paired_ratios", "ratio_spread", "matmul_peak_gflops", "paired_timings", "child_peak_rss_mb", "machine",
    "describe_machine", "flat_numbers", "figures_from_output",
]

# The spatial layer's shape at paper scale and a square one: the two shapes of the reference peak.
PEAK_SHAPES = ((4096, 6144, 256), (4096, 4096, 4096))


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages, rounded to 2 decimals."""
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


def timings(fn: Callable[[], object], repeats: int = 3, max_wait_s: float = 0.0, warmup: bool = True) -> list[float]:
    """Wall seconds of `repeats` calls of `fn`, after one untimed warm-up call (compilation,
    first touch of buffers) unless `warmup` is False; each call waits up to `max_wait_s` for
    idle CPUs first."""
    if warmup:
        fn()
    seconds = []
    for _ in range(repeats):
        if max_wait_s:
            wait_idle(max_wait_s)
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return seconds


def best_time(fn: Callable[[], object], repeats: int = 3, max_wait_s: float = 0.0) -> float:
    """Shortest wall time of `repeats` calls after a warm-up call: for peaks (what the machine
    can do). A workload's figure is reported with `spread(timings(...))` instead."""
    return min(timings(fn, repeats, max_wait_s))


@dataclasses.dataclass(frozen=True)
class Spread:
    """The median of repeated measurements and their range [low, high] over `count` runs."""

    median: float
    low: float
    high: float
    count: int

    def format(self, spec: str = ".3f", unit: str = "") -> str:
        """'1.234 [1.100–1.300]' (median [min–max]), each number formatted with `spec`."""
        return f"{self.median:{spec}}{unit} [{self.low:{spec}}–{self.high:{spec}}{unit}]"

    def range(self) -> list[float]:
        """[low, high], as results.json stores a range."""
        return [self.low, self.high]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def spread(values: Sequence[float]) -> Spread:
    """Median and range of `values` (at least one)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("spread of no values")
    return Spread(statistics.median(values), min(values), max(values), len(values))


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """numerator[i] / denominator[i] for runs measured in pairs (same length)."""
    if len(numerator) != len(denominator):
        raise ValueError(f"paired runs differ in number: {len(numerator)} and {len(denominator)}")
    return [n / d if d else math.nan for n, d in zip(numerator, denominator)]


def ratio_spread(numerator: Sequence[float], denominator: Sequence[float]) -> Spread:
    """The ratio of the medians, with the range of the ratios of paired runs (how far one
    pair of runs can be from another on this machine)."""
    ratios = paired_ratios(numerator, denominator)
    finite = [r for r in ratios if math.isfinite(r)] or [math.nan]
    base = statistics.median(float(d) for d in denominator)
    median = statistics.median(float(n) for n in numerator) / base if base else math.nan
    return Spread(median, min(finite), max(finite), len(ratios))


def matmul_peak_gflops(
    repeats: int = 5, max_wait_s: float = 0.0, shapes: Sequence[tuple[int, int, int]] = PEAK_SHAPES,
    dtype: str = "float32",
) -> dict[str, float]:
    """JAX dense matmul GFLOP/s on this machine, best of `repeats` per [m, k] x [k, n] shape
    (keys 'MxKxN'), and 'peak', the largest. Default shapes: the paper-scale spatial layer
    [4096, 6144] x [6144, 256] and a square 4096³, in float32."""
    import jax
    import jax.numpy as jnp

    key = jax.random.key(0)
    out = {}
    dot = jax.jit(jnp.dot)
    for m, k, n in shapes:
        a = jax.random.normal(key, (m, k), dtype)
        b = jax.random.normal(key, (k, n), dtype)
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
    """Run `code` in a fresh Python process; it must set a dict RESULT. Returns that dict plus
    'peak_rss_mb' (the child's VmHWM, read by the child itself before exiting: ru_maxrss would
    carry the parent's over exec)."""
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


def _cpu_model() -> tuple[str, list[str]]:
    """(model name, flags) from /proc/cpuinfo; platform.processor() where there is none."""
    try:
        with open("/proc/cpuinfo") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return platform.processor() or "unknown", []
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return fields.get("model name", platform.processor() or "unknown"), fields.get("flags", "").split()


def machine(with_jax: bool = True) -> dict:
    """What a figure was measured on: CPU model and cores (all, and usable by this process), the
    SIMD extensions that matter for the kernels, load averages, Python, and (with_jax) the JAX
    version, backend and devices. Nothing identifying the host."""
    model, flags = _cpu_model()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out = {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "simd": [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags],
        "load_average": load_average(),
        "python": platform.python_version(),
        "os": platform.system(),
    }
    if with_jax:
        import jax

        out.update(jax=jax.__version__, backend=jax.default_backend(),
                   devices=[str(d) for d in jax.devices()])
    return out


def describe_machine(description: Mapping) -> str:
    """One line for the top of a benchmark's output, from `machine()`."""
    text = (f"{description['cpu_model']}, {description['cpus_usable']}/{description['cpus']} CPUs usable "
            f"({' '.join(description['simd']) or 'no AVX2'})")
    if "jax" in description:
        text += f"; jax {description['jax']} {description['backend']}, {len(description['devices'])} device(s)"
    load = description["load_average"]
    return text + f"; load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def flat_numbers(figures: Mapping, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a nested mapping as {'a.b.c': value} (booleans and lists left out):
    the metrics of one benchmark run, comparable key by key between runs."""
    out: dict[str, float] = {}
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_numbers(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def figures_from_output(stdout: str, files: Sequence[os.PathLike | str] = ()) -> dict:
    """A benchmark run's figures: the first of `files` that exists (a JSON object), else the last
    line of `stdout` that is a JSON object. Raises ValueError if there is none."""
    for path in files:
        if os.path.exists(path):
            with open(path) as handle:
                return json.load(handle)
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    raise ValueError("the benchmark wrote no JSON file and printed no JSON object line")
