"""Training throughput of the real train step, against this machine's matmul peak (same run).

    .venv/bin/python benchmarks/bench_train.py [--channels 384 --units 100 --batch 1024]

Prints windows/s of `esort_jax.train.make_train_step` (the step `train` uses: Adam, BatchNorm
in train mode, donated state, windows cut on device from resident traces by default), the
step's FLOPs, the dense fp32 matmul peak measured in the same process (best of several runs of
4096x4096 and of the spatial layer's [B, C*F2] x [C*F2, S]), the achieved fraction of peak, and
the load average before and after (the machine is shared: compare runs at similar load).

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

from esort_jax.runtime.host_memory import configure_host_allocator

# Before JAX starts its backend: see configure_host_allocator (opt out with --no-tune-malloc).
TUNED = "--no-tune-malloc" not in sys.argv and configure_host_allocator()

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from esort_jax import ArrayTraces, Recording
from esort_jax.model import ModelConfig, window_flops
from esort_jax.batches import DeviceTraces, epoch_order, gather_host
from esort_jax.fast import choose_kernel
from esort_jax.train import TrainConfig, create_train_state, init_model, make_mesh, make_optimizer, make_train_step

from flax import nnx


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def best_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak(batch: int, k: int, n: int, repeats: int, dtype=jnp.float32) -> dict:
    """Best-of matmul rates in GFLOP/s: square 4096 and the spatial layer's shape."""
    key = jax.random.key(0)
    a = jax.random.normal(key, (4096, 4096), dtype)
    b = jax.random.normal(jax.random.fold_in(key, 1), (4096, 4096), dtype)
    x = jax.random.normal(jax.random.fold_in(key, 2), (batch, k), dtype)
    w = jax.random.normal(jax.random.fold_in(key, 3), (k, n), dtype)
    mm = jax.jit(jnp.matmul)
    square = 2 * 4096**3 / best_time(mm, a, b, repeats=repeats) / 1e9
    spatial = 2 * batch * k * n / best_time(mm, x, w, repeats=max(repeats, 5)) / 1e9
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--units", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--windows", type=int, default=16384, help="training windows (random starts)")
    parser.add_argument("--seconds", type=float, default=4.0, help="recording length at 32 kHz")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (peak, steps); best is reported")
    parser.add_argument("--path", choices=("device", "host"), default="device")
    parser.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="model.compute_dtype; with bfloat16 the bf16 matmul peak is measured too")
    parser.add_argument("--kernel", choices=("auto", "xla", "native"), default="auto",
                        help="train.kernel (layer 1: native C++ kernel reading windows in place, or XLA)")
    parser.add_argument("--no-reference", action="store_true",
                        help="with the native kernel, skip timing the XLA path in the same rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON line as well")
    parser.add_argument("--no-tune-malloc", action="store_true",
                        help="leave glibc malloc as is (XLA's per-step temporaries then page-fault)")
    args = parser.parse_args()

    load_before = load()
    C, N, B = args.channels, args.units, args.batch
    config = ModelConfig(compute_dtype=args.compute_dtype)
    fs, num_samples = 32000.0, int(args.seconds * 32000)
    rng = np.random.default_rng(0)
    traces = (10 * rng.standard_normal((num_samples, C))).astype(np.float32)
    recording = Recording(ArrayTraces(traces), fs, np.stack([np.zeros(C), 20.0 * np.arange(C)], 1))
    starts = rng.integers(0, num_samples - config.window, size=args.windows)
    labels = (rng.random((args.windows, N)) < 0.02).astype(np.uint8)

    mesh = make_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    window_sharding = NamedSharding(mesh, PartitionSpec(None, "data"))
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

        def run(state, i, k=kernel):
            idx = order_np[(i % steps_each_epoch) * B : (i % steps_each_epoch + 1) * B]
            x = jax.device_put(gather_host(recording, starts[idx], config.window, layout="WBC"), window_sharding)
            y = jax.device_put(labels[idx], batch_sharding)
            return steps_by_kernel[k](state, x, y)

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
    i = 3
    for _ in range(args.rounds):
        peaks.append(matmul_peak(B, C * config.temporal_features[1], config.spatial_features, repeats=3))
        if args.compute_dtype == "bfloat16":
            bf16_peaks.append(matmul_peak(B, C * config.temporal_features[1], config.spatial_features,
                                          repeats=3, dtype=jnp.bfloat16))
        for k in kernels:
            t = time.perf_counter()
            for _ in range(args.steps):
                state, loss = run(state, i, k)
                i += 1
            jax.block_until_ready(loss)
            times[k].append((time.perf_counter() - t) / args.steps)
    step_times = times[kernel]

    flops = step_flops(C, N, config, B)
    best_step = min(step_times)
    peak = max(p["peak"] for p in peaks)
    achieved = flops["step_exact"] / best_step / 1e9
    result = {
        "devices": [str(d) for d in jax.devices()],
        "malloc_tuned": TUNED,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "channels": C, "units": N, "batch": B, "path": args.path,
        "compile_seconds": round(compile_seconds, 2),
        "step_seconds_best": round(best_step, 4),
        "step_seconds_median": round(float(np.median(step_times)), 4),
        "windows_per_second": round(B / best_step, 1),
        "windows_per_second_median": round(B / float(np.median(step_times)), 1),
        "step_gflop_exact": round(flops["step_exact"] / 1e9, 3),
        "step_gflop_3x_forward": round(flops["step_3x_forward"] / 1e9, 3),
        "achieved_gflops": round(achieved, 1),
        "matmul_peak_gflops": round(peak, 1),
        "matmul_square_4096_gflops": [round(p["square_4096"], 1) for p in peaks],
        "matmul_spatial_shape_gflops": [round(p["spatial_shape"], 1) for p in peaks],
        "fraction_of_peak": round(achieved / peak, 3),
        "fraction_of_peak_3x_forward": round(flops["step_3x_forward"] / best_step / 1e9 / peak, 3),
        "compute_dtype": args.compute_dtype,
        "kernel": kernel,
        "loss": float(loss),
        "load_before": load_before,
        "load_after": load(),
    }
    print(f"E-Sort train step, C={C}, N={N}, batch {B}, {args.compute_dtype}, {args.path} path, {len(jax.devices())} device(s), "
          f"malloc {'tuned' if TUNED else 'default'}, layer-1 kernel {kernel}")
    print(f"  step            {best_step * 1e3:.1f} ms best, {np.median(step_times) * 1e3:.1f} ms median "
          f"(compile {compile_seconds:.1f} s)")
    print(f"  throughput      {B / best_step:,.0f} windows/s best ({B / np.median(step_times):,.0f} median)")
    print(f"  step FLOPs      {flops['step_exact'] / 1e9:.2f} GFLOP exact ({flops['step_3x_forward'] / 1e9:.2f} as 3x forward)")
    print(f"  achieved        {achieved:.1f} GFLOP/s")
    print(f"  matmul peak     {peak:.1f} GFLOP/s (best of 4096^2 {[round(p['square_4096']) for p in peaks]}, "
          f"[{B},{C * config.temporal_features[1]}]x[{C * config.temporal_features[1]},{config.spatial_features}] "
          f"{[round(p['spatial_shape']) for p in peaks]})")
    print(f"  fraction        {achieved / peak:.1%} of peak ({result['fraction_of_peak_3x_forward']:.1%} counting 3x forward)")
    print(f"  load average    {load_before} before, {result['load_after']} after (1, 5, 15 min; {os.cpu_count()} CPUs)")
    if "xla" in times and kernel != "xla":
        xla_best = min(times["xla"])
        ratios = [x / n for x, n in zip(times["xla"], times[kernel])]
        result.update(
            xla_step_seconds_best=round(xla_best, 4),
            xla_fraction_of_peak=round(flops["step_exact"] / xla_best / 1e9 / peak, 3),
            native_over_xla_per_round=[round(r, 3) for r in ratios],
        )
        print(f"  XLA path        {xla_best * 1e3:.1f} ms best in the same rounds "
              f"({result['xla_fraction_of_peak']:.1%} of peak); native speed-up per round "
              f"{', '.join(f'{r:.2f}x' for r in ratios)}")
    if bf16_peaks:
        bf16_peak = max(p["peak"] for p in bf16_peaks)
        result["matmul_peak_bf16_gflops"] = round(bf16_peak, 1)
        result["fraction_of_bf16_peak"] = round(achieved / bf16_peak, 3)
        print(f"  bf16 matmul     {bf16_peak:.1f} GFLOP/s peak; the step reaches {achieved / bf16_peak:.1%} of it")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
