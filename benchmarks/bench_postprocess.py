"""Post-processing throughput: 100 units × 10 s at 32 kHz, JAX against a numpy/scipy loop.

Prints time steps per second, the real-time factor (seconds of recording per wall second)
and the speed ratio to a plain reference measured in the same run: per unit, np.convolve
with the triangular kernel then scipy.signal.find_peaks(height=threshold[, distance]).
The two pick the same spikes wherever there are no exact plateaus (find_peaks takes a
plateau's middle and never the trace ends); the script reports how many spikes agree.

Usage: .venv/bin/python benchmarks/bench_postprocess.py [--units 100] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


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


def best_of(fn, repeats: int):
    times = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), float(np.median(times)), result


def main():
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
    args = parser.parse_args()

    import jax

    from esort_jax.postprocess import PostprocessConfig, find_spikes, triangular_kernel

    num_steps = int(round(args.seconds * args.fs))
    p = synthetic_probabilities(args.units, num_steps, args.fs, args.rate_hz, seed=0)
    load = os.getloadavg()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {os.cpu_count()} cpus; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{args.units} units × {num_steps} steps ({args.seconds:g} s at {args.fs:g} Hz), "
          f"threshold {args.threshold}, min distance {args.min_distance}")

    kernel = triangular_kernel(17, "peak").astype(np.float32)
    ref_best, ref_median, ref = best_of(
        lambda: numpy_reference(p, kernel, args.threshold, args.min_distance), max(2, args.repeats // 2)
    )
    ref_count = sum(r.size for r in ref)
    print(f"numpy/scipy reference: best {ref_best:.3f} s (median {ref_median:.3f} s), "
          f"{num_steps / ref_best:,.0f} steps/s, real time ×{args.seconds / ref_best:.1f}, {ref_count} spikes")

    for chunk_steps in args.chunk_steps:
        for per_call in args.chunks_per_call:
            config = PostprocessConfig(
                threshold=args.threshold, min_distance_samples=args.min_distance,
                chunk_steps=chunk_steps, chunks_per_call=per_call, capacity=256,
            )
            start = time.perf_counter()
            find_spikes(p, sampling_frequency=args.fs, config=config)  # compile
            compile_s = time.perf_counter() - start
            stats: dict = {}
            best, median, sorting = best_of(
                lambda: find_spikes(p, sampling_frequency=args.fs, config=config, stats=stats), args.repeats
            )
            agree = sum(
                np.intersect1d(sorting.unit_samples(n), ref[n]).size for n in range(args.units)
            )
            print(
                f"jax chunk_steps={chunk_steps} chunks_per_call={per_call}: best {best:.3f} s "
                f"(median {median:.3f} s, first call incl. compile {compile_s:.2f} s), "
                f"{num_steps / best:,.0f} steps/s, real time ×{args.seconds / best:.1f}, "
                f"{ref_best / best:.1f}× the reference; {sorting.num_spikes} spikes, "
                f"{agree} identical to the reference; re-runs: exact {stats['exact_reruns']}, "
                f"context {stats['context_reruns']}, capacity {stats['capacity_reruns']}"
            )
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
