"""Benchmark of convolution-form inference (esort_jax.infer) at paper scale.

384 channels, 32 kHz, 100 units, random weights (BatchNorm statistics randomised), Gaussian
noise traces. Prints, each line with the 1-minute load average at the time of measuring:

  - the dense fp32 matmul peak of JAX measured in this run ([4096, 6144]×[6144, 256] and
    4096²×4096, best of several runs);
  - the conv-form kernel on one in-memory chunk (best of --repeats) and end to end
    (`iter_probabilities` over an in-memory recording: host reads, prefetch thread, NaN check,
    transfers, float32 outputs), as seconds of recording per wall second (real-time factor),
    achieved GFLOP/s (network FLOPs: 3.66 MFLOP per sample) and fraction of the peak;
  - the naive references -- one window per call, and materialised windows in batches of 256
    (folded dense network and Flax model; same FLOPs as the convolution form) -- and the ratios;
  - the bfloat16 option: speed and its accuracy cost against float32;
  - inference + post-processing (esort_jax.postprocess.find_spikes on the streamed chunks);
  - peak RSS of streaming inference over a memory-mapped on-disk int16 recording for two
    durations, each in a fresh subprocess.

The machine is shared: each timed run waits (up to --max-wait s) for the CPUs to be idle and
the best of several runs is reported. Usage:

  .venv/bin/python benchmarks/bench_infer.py                      # full (~10 min)
  .venv/bin/python benchmarks/bench_infer.py --seconds 4 --rss-seconds 10 30   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FS = 32000.0
GAIN_UV = 0.195  # Neuropixels 1.0 int16 → µV


def load() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def cpu_idle_fraction(interval: float = 0.5) -> float:
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)

    i0, t0 = read()
    time.sleep(interval)
    i1, t1 = read()
    return (i1 - i0) / max(t1 - t0, 1)


def wait_idle(max_wait: float, threshold: float = 0.9) -> None:
    """Wait until the CPUs are mostly idle (others share this machine), at most max_wait s."""
    t0 = time.time()
    while time.time() - t0 < max_wait and cpu_idle_fraction() < threshold:
        pass


def best_time(fn, repeats: int, max_wait: float) -> float:
    fn()  # warm-up (compilation, first-touch of buffers)
    best = float("inf")
    for _ in range(repeats):
        wait_idle(max_wait)
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def random_model(num_channels: int, num_units: int, seed: int = 0):
    import jax.numpy as jnp
    from flax import nnx

    from esort_jax.model import ESortNet, ModelConfig

    model = ESortNet(num_channels, num_units, ModelConfig(), rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    bb = model.backbone
    for norm in (bb.temporal1.norm, bb.temporal2.norm, bb.spatial.norm):
        n = norm.mean[...].shape
        # statistics of the order of what 10 µV noise produces through random filters
        norm.mean[...] = jnp.asarray(rng.normal(0.0, 1.0, n), jnp.float32)
        norm.var[...] = jnp.asarray(rng.uniform(10.0, 100.0, n), jnp.float32)
        norm.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, n), jnp.float32)
        norm.bias[...] = jnp.asarray(rng.normal(0.0, 0.3, n), jnp.float32)
    # a larger head spreads the probabilities over (0, 1) (logit std ~2 instead of ~0.3), so the
    # bfloat16 accuracy figure is measured where the sigmoid is steep, not only near 0.5
    model.head.kernel[...] = model.head.kernel[...] * 8.0
    model.eval()
    return model


def noise(num_samples: int, num_channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((num_samples, num_channels), np.float32)
    step = 1 << 16
    for s in range(0, num_samples, step):
        block = rng.standard_normal((min(step, num_samples - s), num_channels), dtype=np.float32)
        out[s:s + step] = block * 10.0
    return out


def matmul_peak(repeats: int, max_wait: float) -> dict:
    import jax
    import jax.numpy as jnp

    key = jax.random.key(0)
    out = {}
    for m, k, n in [(4096, 6144, 256), (4096, 4096, 4096)]:
        a = jax.random.normal(key, (m, k), jnp.float32)
        b = jax.random.normal(key, (k, n), jnp.float32)
        dot = jax.jit(jnp.dot)
        t = best_time(lambda: dot(a, b).block_until_ready(), repeats, max_wait)
        out[f"{m}x{k}x{n}"] = 2.0 * m * k * n / t / 1e9
        print(f"  matmul [{m},{k}]x[{k},{n}] fp32: {out[f'{m}x{k}x{n}']:6.1f} GFLOP/s   ({load()})", flush=True)
    return out


def rss_child(path: str, seconds: float, chunk_steps: int) -> None:
    """Stream inference over the first `seconds` of a memory-mapped int16 .npy; print peak RSS."""
    from esort_jax import infer
    from esort_jax.recording import ArrayTraces

    array = np.load(path, mmap_mode="r")
    source = ArrayTraces(array, gain_to_uv=GAIN_UV)
    params = infer.fold_batchnorm(random_model(array.shape[1], 100))
    stop = int(seconds * FS)
    peaks = {"RssAnon": 0, "RssFile": 0, "VmHWM": 0}
    columns, t0 = 0, time.perf_counter()
    for _, p in infer.iter_probabilities(params, source, infer.InferenceConfig(chunk_steps=chunk_steps), stop=stop):
        columns += p.shape[1]
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":")[0]
                if key in peaks:
                    peaks[key] = max(peaks[key], int(line.split()[1]))
    wall = time.perf_counter() - t0
    print("RSS " + json.dumps({
        "seconds": seconds, "columns": columns, "wall_s": wall,
        # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec (it would show the parent's)
        "max_rss_mb": peaks["VmHWM"] / 1024,
        "peak_anon_mb": peaks["RssAnon"] / 1024, "peak_file_mb": peaks["RssFile"] / 1024,
    }), flush=True)


def write_int16_recording(path: Path, seconds: float, num_channels: int) -> None:
    """A [T, C] int16 .npy of Gaussian noise (10 µV), written block by block (tiled 10 s)."""
    num_samples = int(seconds * FS)
    block = np.round(noise(int(10 * FS), num_channels, seed=7) / GAIN_UV).astype(np.int16)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.int16, shape=(num_samples, num_channels))
    for s in range(0, num_samples, block.shape[0]):
        n = min(block.shape[0], num_samples - s)
        array[s:s + n] = block[:n]
    array.flush()
    del array


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="recording length for the end-to-end run")
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--units", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (best reported)")
    parser.add_argument("--max-wait", type=float, default=30.0, help="max seconds to wait for idle CPUs per run")
    parser.add_argument("--chunk-steps", type=int, default=32768)
    parser.add_argument("--block-steps", type=int, default=None)
    parser.add_argument("--segment", type=int, default=None)
    parser.add_argument("--naive-seconds", type=float, default=0.5)
    parser.add_argument("--rss-seconds", type=float, nargs="*", default=[30.0, 300.0])
    parser.add_argument("--rss-child", nargs=2, metavar=("PATH", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.rss_child:
        rss_child(args.rss_child[0], float(args.rss_child[1]), args.chunk_steps)
        return

    import jax
    import jax.numpy as jnp

    from esort_jax import infer
    from esort_jax.fast.conv import conv_logits

    config = infer.InferenceConfig(chunk_steps=args.chunk_steps)
    overrides = {k: v for k, v in (("block_steps", args.block_steps), ("segment", args.segment)) if v}
    config = infer.InferenceConfig(**{**config.__dict__, **overrides})
    print(f"bench_infer: {args.channels} channels, {args.units} units, {FS / 1000:.0f} kHz; jax {jax.__version__}, "
          f"{jax.local_device_count()} device(s), {os.cpu_count()} CPUs; {config}")
    print(f"  start ({load()})", flush=True)

    print("Dense matmul peak (this run):")
    peaks = matmul_peak(args.repeats, args.max_wait)
    peak = max(peaks.values())

    model = random_model(args.channels, args.units)
    params = infer.fold_batchnorm(model)
    flops = params.flops_per_step()
    window = params.window
    print(f"Network: {flops / 1e6:.3f} MFLOP per sample (window {window}, features "
          f"{params.temporal_features}, {params.spatial_features})")

    def report(name: str, seconds_of_data: float, wall: float) -> float:
        rt = seconds_of_data / wall
        gflops = flops * seconds_of_data * FS / wall / 1e9
        print(f"  {name:44s} {rt:6.3f}x real time  {gflops:6.1f} GFLOP/s  {100 * gflops / peak:5.1f}% of peak   "
              f"({load()})", flush=True)
        return rt

    # --- conv-form kernel on one chunk (device-resident input) -------------------------
    steps = config.padded_chunk_steps
    x_chunk = jnp.asarray(noise(steps + window - 1, args.channels, seed=1))
    print("Convolution form:")
    results = {}
    native_ok = infer.InferenceConfig().resolve_kernel(params).kernel == "native"
    variants = [("native", "float32")] if native_ok else []
    variants += [("xla", "float32"), ("xla", "bfloat16")]
    for kind, dtype in variants:
        kernel = jax.jit(lambda p, x, dt=dtype, k=kind: conv_logits(
            p, x, block_steps=config.block_steps, segment=config.segment, compute_dtype=dt, kernel=k))
        t = best_time(lambda: kernel(params, x_chunk).block_until_ready(), args.repeats, args.max_wait)
        results[f"kernel_{kind}_{dtype}"] = report(f"kernel, one {steps}-step chunk, {kind}, {dtype}", steps / FS, t)
    if native_ok:
        print(f"  native / xla kernel (float32): {results['kernel_native_float32'] / results['kernel_xla_float32']:.2f}x")

    # --- end to end over an in-memory recording ----------------------------------------
    traces = noise(int(args.seconds * FS), args.channels, seed=2)
    columns = traces.shape[0] - window + 1

    def end_to_end(cfg):
        n = 0
        for _, p in infer.iter_probabilities(params, traces, cfg):
            n += p.shape[1]
        assert n == columns

    e2e_repeats = max(2, args.repeats // 2)
    t = best_time(lambda: end_to_end(config), e2e_repeats, args.max_wait)
    results["end_to_end"] = report(
        f"iter_probabilities, {args.seconds:g} s, float32 ({config.resolve_kernel(params).kernel})",
        traces.shape[0] / FS, t)
    if native_ok:
        xla_config = infer.InferenceConfig(**{**config.__dict__, "kernel": "xla"})
        t = best_time(lambda: end_to_end(xla_config), e2e_repeats, args.max_wait)
        report(f"iter_probabilities, {args.seconds:g} s, float32 (xla)", traces.shape[0] / FS, t)
    bf16_config = infer.InferenceConfig(**{**config.__dict__, "compute_dtype": "bfloat16"})
    t = best_time(lambda: end_to_end(bf16_config), e2e_repeats, args.max_wait)
    report(f"iter_probabilities, {args.seconds:g} s, bfloat16", traces.shape[0] / FS, t)

    # --- bf16 accuracy cost --------------------------------------------------------------
    span = min(traces.shape[0], int(4 * FS))
    p32 = infer.predict_probabilities(params, traces[:span], config)
    p16 = infer.predict_probabilities(params, traces[:span], bf16_config)
    diff = np.abs(p16 - p32)
    print(f"  bfloat16 vs float32 probabilities over {span / FS:g} s: max |diff| {diff.max():.2e}, "
          f"mean |diff| {diff.mean():.2e}, 99.9th pct {np.quantile(diff, 0.999):.2e} "
          f"(fp32 p: mean {p32.mean():.3f}, std {p32.std():.3f})")

    # --- naive reference -----------------------------------------------------------------
    print("Naive window-by-window reference:")
    naive_span = int(args.naive_seconds * FS) + window - 1
    x_naive = traces[:naive_span]
    t = best_time(lambda: infer.naive_logits(params, x_naive, block_steps=256), 3, args.max_wait)
    rt_naive = report(f"folded dense net, {args.naive_seconds:g} s, blocks of 256", naive_span / FS, t)
    t = best_time(lambda: infer.naive_logits(model, x_naive, block_steps=256), 3, args.max_wait)
    rt_flax = report(f"Flax model (eval), {args.naive_seconds:g} s, blocks of 256", naive_span / FS, t)
    window_span = int(0.1 * FS) + window - 1
    t = best_time(lambda: infer.naive_logits(params, traces[:window_span], block_steps=1), 1, args.max_wait)
    rt_window = report("folded dense net, 0.1 s, one window per call", window_span / FS, t)
    naive_check = infer.naive_logits(params, x_naive, block_steps=256)
    conv_check = np.asarray(conv_logits(params, jnp.asarray(x_naive), block_steps=config.block_steps,
                                              segment=config.segment))
    print(f"  conv form end to end / naive: {results['end_to_end'] / rt_window:.1f}x (one window per call), "
          f"{results['end_to_end'] / rt_naive:.2f}x (folded, batched), "
          f"{results['end_to_end'] / rt_flax:.2f}x (Flax, batched); max |prob diff| conv vs naive "
          f"{np.abs(1 / (1 + np.exp(-naive_check)) - 1 / (1 + np.exp(-conv_check))).max():.1e}")

    # --- inference + post-processing -----------------------------------------------------
    try:
        from esort_jax import postprocess
    except ImportError as error:  # owned by another module; skip if absent
        print(f"Post-processing: skipped ({error})")
    else:
        print("Inference + post-processing (find_spikes on the streamed chunks):")

        def with_postprocess():
            pieces = (p for _, p in infer.iter_probabilities(params, traces, config))
            postprocess.find_spikes(pieces, sampling_frequency=FS, sample_offset=params.anchor)

        t = best_time(with_postprocess, e2e_repeats, args.max_wait)
        report(f"inference + find_spikes, {args.seconds:g} s", traces.shape[0] / FS, t)

    # --- peak memory over a memory-mapped recording ------------------------------------
    if args.rss_seconds:
        print("Peak memory, streaming over a memory-mapped int16 .npy (fresh subprocess each):")
        with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
            path = Path(tmp) / "traces.npy"
            t0 = time.perf_counter()
            write_int16_recording(path, max(args.rss_seconds), args.channels)
            print(f"  wrote {path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s")
            rows = []
            for seconds in args.rss_seconds:
                wait_idle(args.max_wait)
                run = subprocess.run(
                    [sys.executable, __file__, "--rss-child", str(path), str(seconds),
                     "--chunk-steps", str(args.chunk_steps)],
                    capture_output=True, text=True,
                )
                if run.returncode:
                    print(run.stderr[-2000:])
                    raise SystemExit("RSS child failed")
                row = json.loads(run.stdout.split("RSS ", 1)[1])
                rows.append(row)
                print(f"  {seconds:6.0f} s: peak RSS {row['max_rss_mb']:7.0f} MB (peak anon {row['peak_anon_mb']:6.0f} MB,"
                      f" file-backed {row['peak_file_mb']:6.0f} MB), {seconds / row['wall_s']:.3f}x real time "
                      f"({load()})", flush=True)
            if len(rows) >= 2:
                print(f"  peak RSS {rows[-1]['seconds']:g} s / {rows[0]['seconds']:g} s: "
                      f"{rows[-1]['max_rss_mb'] / rows[0]['max_rss_mb']:.3f}")
    print(f"  end ({load()})")


if __name__ == "__main__":
    main()
