"""Post-processing throughput: 100 units × 10 s at 32 kHz, JAX against a numpy/scipy loop.

Prints time steps per second, the real-time factor (seconds of recording per wall second)
and the speed ratio to a plain reference measured in the same run (median [min–max] over
--repeats runs; the ratio is of the medians): per unit, np.convolve
with the triangular kernel then scipy.signal.find_peaks(height=threshold[, distance]).
The two pick the same spikes wherever there are no exact plateaus (find_peaks takes a
plateau's middle and never the trace ends); the script reports how many spikes agree.

Usage: .venv/bin/python benchmarks/bench_postprocess.py [--units 100] [--seconds 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from esort_jax.runtime.benchmarking import describe_machine, load_average, machine, spread


def synthetic_probabilities(num_units: int, num_steps: int, fs: float, rate_hz: float, seed: int):
    """Sigmoid-like traces: low noise plus bumps ~11 samples wide around Poisson spikes."""
    rng = np.random.default_rng(seed)
    p = (0.02 * rng.random((num_units, num_steps))).astype(np.float32)
    bump = np.exp(-0.5 * (np.arange(-8, 9) / 3.0) ** 2).astype(np.float32)
    for n in range(num_units):
        count = rng.poisson(rate_hz * num_steps / fs)
        times = rng.integers(8, num_steps - 9, count)
        for t in times:  # set-up only, not timed
            p[n, t - 8:t + 9] = np.maximum(p[n, t - 8:t + 9], rng.uniform(0.3, 1.0) * bump)
    return p


def numpy_reference(p: np.ndarray, kernel: np.ndarray, threshold: float, distance: int):
    from scipy.signal import find_peaks

    out = []
    for row in p:
        smoothed = np.convolve(row, kernel, mode="same")
        kwargs = {"distance": distance} if distance > 1 else {}
        peaks, _ = find_peaks(smoothed, height=threshold, **kwargs)
        out.append(peaks)
    return out


def run_timed(fn, repeats: int, warmup: bool = False):
    """(Spread of the wall seconds of `repeats` calls, the last call's result), after one untimed
    call if `warmup` (the JAX path is compiled, and timed, by its caller)."""
    times = []
    result = fn() if warmup else None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return spread(times), result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fs", type=float, default=32000.0)
    parser.add_argument("--rate-hz", type=float, default=10.0)
    parser.add_argument("--threshold", type=float, default=1.5)
    parser.add_argument("--min-distance", type=int, default=0)
    parser.add_argument("--chunk-steps", type=int, nargs="+", default=[32768])
    parser.add_argument("--chunks-per-call", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON to this file")
    return parser.parse_args(argv)


def _rates(seconds, num_steps: int, duration_s: float) -> dict:
    """Median and range of wall seconds, steps/s and the real-time factor."""
    return {"seconds_median": seconds.median, "seconds_range": seconds.range(),
            "steps_per_second_median": num_steps / seconds.median,
            "realtime_factor_median": duration_s / seconds.median,
            "realtime_factor_range": [duration_s / seconds.high, duration_s / seconds.low]}


def time_jax(p, ref, ref_seconds, num_steps: int, chunk_steps: int, per_call: int, args) -> dict:
    """find_spikes with one chunking: compile, then --repeats timed runs; agreement with the
    reference's spikes and the re-run counters."""
    from esort_jax.postprocess import PostprocessConfig, find_spikes

    config = PostprocessConfig(
        threshold=args.threshold, min_distance_samples=args.min_distance,
        chunk_steps=chunk_steps, chunks_per_call=per_call, capacity=256,
    )
    start = time.perf_counter()
    find_spikes(p, sampling_frequency=args.fs, config=config)  # compile
    compile_s = time.perf_counter() - start
    stats: dict = {}
    seconds, sorting = run_timed(
        lambda: find_spikes(p, sampling_frequency=args.fs, config=config, stats=stats), args.repeats
    )
    agree = sum(np.intersect1d(sorting.unit_samples(n), ref[n]).size for n in range(args.units))
    out = {"chunk_steps": chunk_steps, "chunks_per_call": per_call, "compile_seconds": compile_s,
           **_rates(seconds, num_steps, args.seconds), "over_reference_median": ref_seconds.median / seconds.median,
           "num_spikes": sorting.num_spikes, "identical_to_reference": int(agree), **stats}
    print(
        f"jax chunk_steps={chunk_steps} chunks_per_call={per_call}: {seconds.format('.3f', ' s')} "
        f"(median [min–max]; first call incl. compile {compile_s:.2f} s), "
        f"{out['steps_per_second_median']:,.0f} steps/s, real time ×{out['realtime_factor_median']:.1f}, "
        f"{out['over_reference_median']:.1f}× the reference; {sorting.num_spikes} spikes, "
        f"{agree} identical to the reference; re-runs: exact {stats['exact_reruns']}, "
        f"context {stats['context_reruns']}, capacity {stats['capacity_reruns']}"
    )
    return out


def main(argv=None):
    args = parse_args(argv)
    from esort_jax.postprocess import triangular_kernel

    num_steps = int(round(args.seconds * args.fs))
    p = synthetic_probabilities(args.units, num_steps, args.fs, args.rate_hz, seed=0)
    description = machine()
    print(describe_machine(description))
    print(f"{args.units} units × {num_steps} steps ({args.seconds:g} s at {args.fs:g} Hz), "
          f"threshold {args.threshold}, min distance {args.min_distance}")

    kernel = triangular_kernel(17, "peak").astype(np.float32)
    ref_seconds, ref = run_timed(
        lambda: numpy_reference(p, kernel, args.threshold, args.min_distance), max(2, args.repeats // 2),
        warmup=True,  # the first call imports scipy.signal
    )
    ref_count = sum(r.size for r in ref)
    reference = {**_rates(ref_seconds, num_steps, args.seconds), "num_spikes": int(ref_count)}
    print(f"numpy/scipy reference: {ref_seconds.format('.3f', ' s')} (median [min–max]), "
          f"{reference['steps_per_second_median']:,.0f} steps/s, "
          f"real time ×{reference['realtime_factor_median']:.1f}, {ref_count} spikes")
    runs = [time_jax(p, ref, ref_seconds, num_steps, chunk_steps, per_call, args)
            for chunk_steps in args.chunk_steps for per_call in args.chunks_per_call]
    load = load_average()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.out:
        result = {"machine": description, "reference": reference, "jax": runs, "load_after": load}
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
