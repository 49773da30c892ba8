"""Training throughput of the real train step, against this machine's matmul peak (same run).

    .venv/bin/python benchmarks/bench_train.py [--channels 384 --units 100 --batch 1024] [--out FILE]

Prints windows/s of `esort_jax.train.make_train_step` (the step `train` uses: Adam, BatchNorm
in train mode, donated state, windows cut on device from resident traces by default), the
step's FLOPs, the dense fp32 matmul peak measured in the same process before each round (best
of several runs of 4096x4096 and of the spatial layer's [B, C*F2] x [C*F2, S]; the reference is
the run's largest), the achieved fraction of peak, and the load average before and after (the
machine is shared: compare runs at similar load). Figures are the median [min–max] over rounds
of --steps steps each; the JSON (--out FILE, or --json for one line on stdout) keeps the best
round's keys too (step_seconds_best, windows_per_second, fraction_of_peak, ...).

FLOP count (dense layers only, 2 FLOPs per multiply-add):
  forward   2 * MACs                   (model.window_flops)
  backward  2 * MACs for every weight gradient + 2 * MACs for every input gradient except
            layer 1's (the input windows need no gradient)
so one training step = B * (3 * fwd - 2 * layer1 MACs); the "3 x forward" convention is
printed too. BatchNorm, ReLU, the loss and Adam are not counted (they are memory-bound).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from esort_jax.runtime.host_memory import configure_host_allocator

# Before JAX starts its backend: see configure_host_allocator (opt out with --no-tune-malloc).
TUNED = "--no-tune-malloc" not in sys.argv and configure_host_allocator()

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from esort_jax import ArrayTraces, Recording
from esort_jax.model import ModelConfig, window_flops
from esort_jax.batches import DeviceTraces, epoch_order, gather_host
from esort_jax.fast import choose_kernel
from esort_jax.runtime.benchmarking import (
    describe_machine, load_average, machine, matmul_peak_gflops, ratio_spread, spread,
)
from esort_jax.train import TrainConfig, create_train_state, init_model, make_mesh, make_optimizer, make_train_step

from flax import nnx


def load() -> str:
    return " ".join(f"{v:.2f}" for v in load_average())


def train_peak(batch: int, k: int, n: int, dtype: str = "float32") -> dict:
    """Best-of matmul rates in GFLOP/s: square 4096 (best of 3) and the spatial layer's shape
    (best of 5)."""
    square = matmul_peak_gflops(3, shapes=[(4096, 4096, 4096)], dtype=dtype)["peak"]
    spatial = matmul_peak_gflops(5, shapes=[(batch, k, n)], dtype=dtype)["peak"]
    return {"square_4096": square, "spatial_shape": spatial, "peak": max(square, spatial)}


def step_flops(num_channels: int, num_units: int, config: ModelConfig, batch: int) -> dict:
    f1, _ = config.temporal_features
    layer1_macs = num_channels * config.window * f1
    forward = window_flops(num_channels, num_units, config)
    return {
        "forward_per_window": forward,
        "step_exact": batch * (3 * forward - 2 * layer1_macs),
        "step_3x_forward": batch * 3 * forward,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--units", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--windows", type=int, default=16384, help="training windows (random starts)")
    parser.add_argument("--seconds", type=float, default=4.0, help="recording length at 32 kHz")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of (peak, steps); median and range over rounds are reported")
    parser.add_argument("--path", choices=("device", "host"), default="device")
    parser.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="model.compute_dtype; with bfloat16 the bf16 matmul peak is measured too")
    parser.add_argument("--kernel", choices=("auto", "xla", "native"), default="auto",
                        help="train.kernel (layer 1: native C++ kernel reading windows in place, or XLA)")
    parser.add_argument("--no-reference", action="store_true",
                        help="with the native kernel, skip timing the XLA path in the same rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON line as well")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON to this file")
    parser.add_argument("--no-tune-malloc", action="store_true",
                        help="leave glibc malloc as is (XLA's per-step temporaries then page-fault)")
    return parser.parse_args(argv)


def make_runner(args, config: ModelConfig):
    """The data (noise traces, random starts and labels), the initial state and run(state, i,
    kernel) -> (state, loss), one train step on batch i; also the layer-1 kernel in use and the
    kernels to time (with the XLA reference)."""
    C, N, B = args.channels, args.units, args.batch
    fs, num_samples = 32000.0, int(args.seconds * 32000)
    rng = np.random.default_rng(0)
    traces = (10 * rng.standard_normal((num_samples, C))).astype(np.float32)
    recording = Recording(ArrayTraces(traces), fs, np.stack([np.zeros(C), 20.0 * np.arange(C)], 1))
    starts = rng.integers(0, num_samples - config.window, size=args.windows)
    labels = (rng.random((args.windows, N)) < 0.02).astype(np.uint8)

    mesh = make_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    model = init_model(C, N, config, seed=0)
    steps_each_epoch = args.windows // B
    tx = make_optimizer(TrainConfig(), nnx.to_pure_dict(nnx.state(model, nnx.Param)), steps_each_epoch)
    state = jax.device_put(create_train_state(model, tx), replicated)
    resident = args.path == "device"
    kernel = choose_kernel(args.kernel, purpose="train", devices=jax.devices(), compute_dtype=config.compute_dtype,
                           temporal_features=config.temporal_features)
    kernels = [kernel] + (["xla"] if kernel == "native" and not args.no_reference else [])
    steps_by_kernel = {k: make_train_step(model, tx, mesh, batch_size=B, resident=resident, kernel=k) for k in kernels}
    order = epoch_order(jax.random.key(1), 0, args.windows, B)

    if resident:
        device = DeviceTraces.load(recording, 0, num_samples, replicated)
        data = {
            "traces": device.traces,
            "starts": jax.device_put(starts.astype(np.int32), replicated),
            "labels": jax.device_put(labels, replicated),
        }
        order = jax.device_put(order, replicated)

        def run(state, i, k=kernel):
            return steps_by_kernel[k](state, data, order, i % steps_each_epoch)
    else:
        order_np = np.asarray(order)
        batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
        window_sharding = NamedSharding(mesh, PartitionSpec(None, "data"))

        def run(state, i, k=kernel):
            idx = order_np[(i % steps_each_epoch) * B : (i % steps_each_epoch + 1) * B]
            x = jax.device_put(gather_host(recording, starts[idx], config.window, layout="WBC"), window_sharding)
            y = jax.device_put(labels[idx], batch_sharding)
            return steps_by_kernel[k](state, x, y)

    return run, state, kernel, kernels


def time_rounds(run, state, kernels: list[str], args, config: ModelConfig) -> dict:
    """Compile, warm up every kernel, then --rounds rounds of (matmul peak, --steps steps per
    kernel): seconds per step per round for each kernel, the peaks, compile time, last loss."""
    compile_start = time.perf_counter()
    state, loss = run(state, 0)
    jax.block_until_ready(loss)
    compile_seconds = time.perf_counter() - compile_start
    for k in kernels:
        for i in range(1, 3):  # warm-up (and compilation of the reference)
            state, loss = run(state, i, k)
    jax.block_until_ready(loss)

    times = {k: [] for k in kernels}
    peaks, bf16_peaks = [], []
    spatial_shape = (args.batch, args.channels * config.temporal_features[1], config.spatial_features)
    i = 3
    for _ in range(args.rounds):
        peaks.append(train_peak(*spatial_shape))
        if args.compute_dtype == "bfloat16":
            bf16_peaks.append(train_peak(*spatial_shape, dtype="bfloat16"))
        for k in kernels:
            t = time.perf_counter()
            for _ in range(args.steps):
                state, loss = run(state, i, k)
                i += 1
            jax.block_until_ready(loss)
            times[k].append((time.perf_counter() - t) / args.steps)
    return {"times": times, "peaks": peaks, "bf16_peaks": bf16_peaks, "compile_seconds": compile_seconds,
            "loss": float(loss)}


def figures(args, config: ModelConfig, kernel: str, timed: dict, load_before: str) -> dict:
    """The JSON figures: the best round's (the keys this script always wrote) and the median and
    [min, max] over rounds; fractions of peak are against the run's largest matmul peak."""
    C, N, B = args.channels, args.units, args.batch
    step_times, peaks = timed["times"][kernel], timed["peaks"]
    flops = step_flops(C, N, config, B)
    peak = max(p["peak"] for p in peaks)
    step = spread(step_times)
    achieved = flops["step_exact"] / step.low / 1e9
    gflops = spread([flops["step_exact"] / t / 1e9 for t in step_times])
    return {
        "devices": [str(d) for d in jax.devices()],
        "malloc_tuned": TUNED,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "channels": C, "units": N, "batch": B, "path": args.path,
        "compile_seconds": round(timed["compile_seconds"], 2),
        "step_seconds_best": round(step.low, 4),
        "step_seconds_median": round(step.median, 4),
        "step_seconds_range": [round(step.low, 4), round(step.high, 4)],
        "windows_per_second": round(B / step.low, 1),
        "windows_per_second_median": round(B / step.median, 1),
        "windows_per_second_range": [round(B / step.high, 1), round(B / step.low, 1)],
        "step_gflop_exact": round(flops["step_exact"] / 1e9, 3),
        "step_gflop_3x_forward": round(flops["step_3x_forward"] / 1e9, 3),
        "achieved_gflops": round(achieved, 1),
        "achieved_gflops_median": round(gflops.median, 1),
        "achieved_gflops_range": [round(gflops.low, 1), round(gflops.high, 1)],
        "matmul_peak_gflops": round(peak, 1),
        "matmul_square_4096_gflops": [round(p["square_4096"], 1) for p in peaks],
        "matmul_spatial_shape_gflops": [round(p["spatial_shape"], 1) for p in peaks],
        "fraction_of_peak": round(achieved / peak, 3),
        "fraction_of_peak_median": round(gflops.median / peak, 3),
        "fraction_of_peak_range": [round(gflops.low / peak, 3), round(gflops.high / peak, 3)],
        "fraction_of_peak_3x_forward": round(flops["step_3x_forward"] / step.low / 1e9 / peak, 3),
        "compute_dtype": args.compute_dtype,
        "kernel": kernel,
        "loss": timed["loss"],
        "load_before": load_before,
        "load_after": load(),
        "machine": machine(),
        **_reference_figures(timed, kernel, flops["step_exact"], peak, achieved),
    }


def _reference_figures(timed: dict, kernel: str, step_flop: float, peak: float, achieved: float) -> dict:
    """The XLA path timed in the same rounds (with the native kernel) and the bf16 matmul peak."""
    out = {}
    times = timed["times"]
    if "xla" in times and kernel != "xla":
        xla = spread(times["xla"])
        speedup = ratio_spread(times["xla"], times[kernel])
        out.update(
            xla_step_seconds_best=round(xla.low, 4),
            xla_step_seconds_median=round(xla.median, 4),
            xla_step_seconds_range=[round(xla.low, 4), round(xla.high, 4)],
            xla_fraction_of_peak=round(step_flop / xla.low / 1e9 / peak, 3),
            xla_fraction_of_peak_median=round(step_flop / xla.median / 1e9 / peak, 3),
            native_over_xla_per_round=[round(x / n, 3) for x, n in zip(times["xla"], times[kernel])],
            native_over_xla_median=round(speedup.median, 3),
        )
    if timed["bf16_peaks"]:
        bf16_peak = max(p["peak"] for p in timed["bf16_peaks"])
        out["matmul_peak_bf16_gflops"] = round(bf16_peak, 1)
        out["fraction_of_bf16_peak"] = round(achieved / bf16_peak, 3)
    return out


def print_figures(result: dict, args, config: ModelConfig) -> None:
    """The figures as text: median [min–max] over rounds."""
    B, k = result["batch"], result["channels"] * config.temporal_features[1]
    ms = [1e3 * t for t in result["step_seconds_range"]]
    print(f"E-Sort train step, C={result['channels']}, N={result['units']}, batch {B}, {result['compute_dtype']}, "
          f"{result['path']} path, {len(result['devices'])} device(s), "
          f"malloc {'tuned' if TUNED else 'default'}, layer-1 kernel {result['kernel']}")
    print(f"  machine         {describe_machine(result['machine'])}")
    print(f"  step            {1e3 * result['step_seconds_median']:.1f} ms [{ms[0]:.1f}–{ms[1]:.1f}] "
          f"(median [min–max] over {args.rounds} rounds of {args.steps} steps; compile "
          f"{result['compile_seconds']:.1f} s)")
    low, high = result["windows_per_second_range"]
    print(f"  throughput      {result['windows_per_second_median']:,.0f} windows/s [{low:,.0f}–{high:,.0f}]")
    print(f"  step FLOPs      {result['step_gflop_exact']:.2f} GFLOP exact "
          f"({result['step_gflop_3x_forward']:.2f} as 3x forward)")
    low, high = result["achieved_gflops_range"]
    print(f"  achieved        {result['achieved_gflops_median']:.1f} GFLOP/s [{low:.1f}–{high:.1f}]")
    print(f"  matmul peak     {result['matmul_peak_gflops']:.1f} GFLOP/s (largest of 4096^2 "
          f"{[round(p) for p in result['matmul_square_4096_gflops']]}, [{B},{k}]x[{k},{config.spatial_features}] "
          f"{[round(p) for p in result['matmul_spatial_shape_gflops']]})")
    low, high = result["fraction_of_peak_range"]
    print(f"  fraction        {result['fraction_of_peak_median']:.1%} of peak [{low:.1%}–{high:.1%}]")
    print(f"  load average    {result['load_before']} before, {result['load_after']} after "
          f"(1, 5, 15 min; {os.cpu_count()} CPUs)")
    if "xla_step_seconds_median" in result:
        low, high = (1e3 * t for t in result["xla_step_seconds_range"])
        print(f"  XLA path        {1e3 * result['xla_step_seconds_median']:.1f} ms [{low:.1f}–{high:.1f}] "
              f"in the same "
              f"rounds ({result['xla_fraction_of_peak_median']:.1%} of peak); native speed-up "
              f"{result['native_over_xla_median']:.2f}x (ratio of medians), per round "
              f"{', '.join(f'{r:.2f}x' for r in result['native_over_xla_per_round'])}")
    if "matmul_peak_bf16_gflops" in result:
        print(f"  bf16 matmul     {result['matmul_peak_bf16_gflops']:.1f} GFLOP/s peak; the best round reaches "
              f"{result['fraction_of_bf16_peak']:.1%} of it")


def main(argv=None) -> None:
    args = parse_args(argv)
    load_before = load()
    config = ModelConfig(compute_dtype=args.compute_dtype)
    run, state, kernel, kernels = make_runner(args, config)
    timed = time_rounds(run, state, kernels, args, config)
    result = figures(args, config, kernel, timed, load_before)
    print_figures(result, args, config)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
