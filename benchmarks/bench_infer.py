"""Benchmark of convolution-form inference (esort_jax.infer) at paper scale.

384 channels, 32 kHz, 100 units, random weights (BatchNorm statistics randomised), Gaussian
noise traces. Prints, each line with the 1-minute load average at the time of measuring:

  - the dense fp32 matmul peak of JAX measured in this run ([4096, 6144]×[6144, 256] and
    4096²×4096, best of several runs: a peak is what the machine can do);
  - the conv-form kernel on one in-memory chunk (--repeats runs) and end to end
    (`iter_probabilities` over an in-memory recording: host reads, prefetch thread, NaN check,
    transfers, float32 outputs), as seconds of recording per wall second (real-time factor),
    achieved GFLOP/s (network FLOPs: 3.66 MFLOP per sample) and fraction of the peak;
  - the naive references -- one window per call, and materialised windows in batches of 256
    (folded dense network and Flax model; same FLOPs as the convolution form) -- and the ratios;
  - the bfloat16 option: speed and its accuracy cost against float32;
  - inference + post-processing (esort_jax.postprocess.find_spikes on the streamed chunks);
  - peak RSS of streaming inference over a memory-mapped on-disk int16 recording for two
    durations, each in a fresh subprocess.

The machine is shared: each timed run waits (up to --max-wait s) for the CPUs to be idle; every
figure is the median [min–max] over its runs, ratios are ratios of medians. --out FILE writes
every figure as JSON (the A/B runner, benchmarks/compare_revisions.py, reads it). Usage:

  .venv/bin/python benchmarks/bench_infer.py                      # full (~10 min)
  .venv/bin/python benchmarks/bench_infer.py --seconds 4 --rss-seconds 10 30   # quicker
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from esort_jax.runtime.benchmarking import (
    Spread, describe_machine, load_average, machine, matmul_peak_gflops, ratio_spread, spread, timings, wait_idle,
)

FS = 32000.0
GAIN_UV = 0.195  # Neuropixels 1.0 int16 → µV


def load() -> str:
    return "load %.2f %.2f %.2f" % tuple(load_average())


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



class Figures:
    """Each timed figure, printed as it is measured and kept for the JSON output: the real-time
    factor (seconds of recording per wall second), GFLOP/s and fraction of the run's matmul
    peak, as median [min–max] over the runs."""

    def __init__(self, flops_per_step: float, peak_gflops: float):
        self.flops, self.peak = flops_per_step, peak_gflops
        self.timed: dict[str, dict] = {}

    def add(self, key: str, label: str, seconds_of_data: float, walls: list[float]) -> Spread:
        """Record (and print) the figure `key` of runs taking `walls` seconds each."""
        rt = spread([seconds_of_data / wall for wall in walls])
        gflops = spread([self.flops * seconds_of_data * FS / wall / 1e9 for wall in walls])
        self.timed[key] = {
            "label": label, "seconds_of_data": seconds_of_data, "runs": len(walls),
            "realtime_factor_median": rt.median, "realtime_factor_range": rt.range(),
            "gflops_median": gflops.median, "fraction_of_peak_median": gflops.median / self.peak,
            "fraction_of_peak_range": [gflops.low / self.peak, gflops.high / self.peak],
            "load": load_average()[0],
        }
        print(f"  {label:44s} {rt.median:6.3f}x [{rt.low:.3f}–{rt.high:.3f}] real time  "
              f"{gflops.median:6.1f} GFLOP/s  "
              f"{100 * gflops.median / self.peak:5.1f}% of peak   ({load()})", flush=True)
        return rt

    def ratio(self, numerator: str, denominator: str) -> float:
        """Ratio of the median real-time factors of two figures."""
        return self.timed[numerator]["realtime_factor_median"] / self.timed[denominator]["realtime_factor_median"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="recording length for the end-to-end run")
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--units", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per kernel figure (median reported)")
    parser.add_argument("--max-wait", type=float, default=30.0, help="max seconds to wait for idle CPUs per run")
    parser.add_argument("--chunk-steps", type=int, default=32768)
    parser.add_argument("--block-steps", type=int, default=None)
    parser.add_argument("--segment", type=int, default=None)
    parser.add_argument("--naive-seconds", type=float, default=0.5)
    parser.add_argument("--rss-seconds", type=float, nargs="*", default=[30.0, 300.0])
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON to this file")
    parser.add_argument("--rss-child", nargs=2, metavar=("PATH", "SECONDS"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def time_kernels(figures: Figures, params, config, args, native_ok: bool) -> dict:
    """The conv-form kernel on one device-resident chunk: native (if built) and XLA in float32,
    XLA in bfloat16; native over XLA as the ratio of medians with its range over run pairs."""
    import jax
    import jax.numpy as jnp

    from esort_jax.fast.conv import conv_logits

    steps = config.padded_chunk_steps
    x_chunk = jnp.asarray(noise(steps + params.window - 1, args.channels, seed=1))
    print("Convolution form:")
    variants = [("native", "float32")] if native_ok else []
    variants += [("xla", "float32"), ("xla", "bfloat16")]
    walls = {}
    for kind, dtype in variants:
        kernel = jax.jit(lambda p, x, dt=dtype, k=kind: conv_logits(
            p, x, block_steps=config.block_steps, segment=config.segment, compute_dtype=dt, kernel=k))
        walls[kind, dtype] = timings(lambda: kernel(params, x_chunk).block_until_ready(), args.repeats, args.max_wait)
        figures.add(f"kernel_{kind}_{dtype}", f"kernel, one {steps}-step chunk, {kind}, {dtype}", steps / FS,
                    walls[kind, dtype])
    if not native_ok:
        return {}
    speedup = ratio_spread(walls["xla", "float32"], walls["native", "float32"])
    print(f"  native / xla kernel (float32): {speedup.format('.2f')}x (ratio of medians [range over run pairs])")
    return {"native_over_xla_kernel_median": speedup.median, "native_over_xla_kernel_range": speedup.range()}


def time_end_to_end(figures: Figures, params, traces: np.ndarray, config, args, native_ok: bool) -> None:
    """iter_probabilities over the in-memory recording: the configured kernel, the XLA path
    (when native runs) and bfloat16."""
    from esort_jax import infer

    columns = traces.shape[0] - params.window + 1

    def end_to_end(cfg):
        n = 0
        for _, p in infer.iter_probabilities(params, traces, cfg):
            n += p.shape[1]
        assert n == columns

    repeats = max(2, args.repeats // 2)
    seconds_of_data = traces.shape[0] / FS
    kernel = config.resolve_kernel(params).kernel
    runs = [("end_to_end", f"float32 ({kernel})", config)]
    if native_ok:
        runs.append(("end_to_end_xla", "float32 (xla)", dataclasses.replace(config, kernel="xla")))
    runs.append(("end_to_end_bfloat16", "bfloat16", dataclasses.replace(config, compute_dtype="bfloat16")))
    for key, what, cfg in runs:
        walls = timings(lambda: end_to_end(cfg), repeats, args.max_wait)
        figures.add(key, f"iter_probabilities, {args.seconds:g} s, {what}", seconds_of_data, walls)


def bfloat16_accuracy(params, traces: np.ndarray, config) -> dict:
    """How far bfloat16 probabilities are from float32 over the first 4 s (printed too)."""
    from esort_jax import infer

    span = min(traces.shape[0], int(4 * FS))
    p32 = infer.predict_probabilities(params, traces[:span], config)
    p16 = infer.predict_probabilities(params, traces[:span], dataclasses.replace(config, compute_dtype="bfloat16"))
    diff = np.abs(p16 - p32)
    out = {"seconds": span / FS, "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
           "q999_abs_diff": float(np.quantile(diff, 0.999)), "p_mean": float(p32.mean()), "p_std": float(p32.std())}
    print(f"  bfloat16 vs float32 probabilities over {span / FS:g} s: max |diff| {out['max_abs_diff']:.2e}, "
          f"mean |diff| {out['mean_abs_diff']:.2e}, 99.9th pct {out['q999_abs_diff']:.2e} "
          f"(fp32 p: mean {out['p_mean']:.3f}, std {out['p_std']:.3f})")
    return out


def time_naive(figures: Figures, model, params, traces: np.ndarray, config, args) -> dict:
    """The naive references (folded dense net and Flax model in blocks of 256 windows, 3 runs
    each; one window per call on 0.1 s, 1 run) and the conv form's speed-up over each (ratios of
    median real-time factors); also the largest probability difference conv form vs naive."""
    import jax.numpy as jnp

    from esort_jax import infer
    from esort_jax.fast.conv import conv_logits

    print("Naive window-by-window reference:")
    naive_span = int(args.naive_seconds * FS) + params.window - 1
    x_naive = traces[:naive_span]
    walls = timings(lambda: infer.naive_logits(params, x_naive, block_steps=256), 3, args.max_wait)
    figures.add("naive_folded_batched", f"folded dense net, {args.naive_seconds:g} s, blocks of 256",
                naive_span / FS, walls)
    walls = timings(lambda: infer.naive_logits(model, x_naive, block_steps=256), 3, args.max_wait)
    figures.add("naive_flax_batched", f"Flax model (eval), {args.naive_seconds:g} s, blocks of 256",
                naive_span / FS, walls)
    window_span = int(0.1 * FS) + params.window - 1
    walls = timings(lambda: infer.naive_logits(params, traces[:window_span], block_steps=1), 1, args.max_wait)
    figures.add("naive_one_window", "folded dense net, 0.1 s, one window per call", window_span / FS, walls)
    naive_check = infer.naive_logits(params, x_naive, block_steps=256)
    conv_check = np.asarray(conv_logits(params, jnp.asarray(x_naive), block_steps=config.block_steps,
                                              segment=config.segment))
    out = {
        "conv_over_naive_one_window": figures.ratio("end_to_end", "naive_one_window"),
        "conv_over_naive_folded_batched": figures.ratio("end_to_end", "naive_folded_batched"),
        "conv_over_naive_flax_batched": figures.ratio("end_to_end", "naive_flax_batched"),
        "max_prob_diff_conv_vs_naive": float(
            np.abs(1 / (1 + np.exp(-naive_check)) - 1 / (1 + np.exp(-conv_check))).max()),
    }
    print(f"  conv form end to end / naive: {out['conv_over_naive_one_window']:.1f}x (one window per call), "
          f"{out['conv_over_naive_folded_batched']:.2f}x (folded, batched), "
          f"{out['conv_over_naive_flax_batched']:.2f}x (Flax, batched); max |prob diff| conv vs naive "
          f"{out['max_prob_diff_conv_vs_naive']:.1e}")
    return out


def time_with_postprocess(figures: Figures, params, traces: np.ndarray, config, args) -> None:
    """Inference and find_spikes on the streamed chunks, as a sort runs them."""
    from esort_jax import infer

    try:
        from esort_jax import postprocess
    except ImportError as error:  # owned by another module; skip if absent
        print(f"Post-processing: skipped ({error})")
        return
    print("Inference + post-processing (find_spikes on the streamed chunks):")

    def with_postprocess():
        pieces = (p for _, p in infer.iter_probabilities(params, traces, config))
        postprocess.find_spikes(pieces, sampling_frequency=FS, sample_offset=params.anchor)

    walls = timings(with_postprocess, max(2, args.repeats // 2), args.max_wait)
    figures.add("with_postprocess", f"inference + find_spikes, {args.seconds:g} s", traces.shape[0] / FS, walls)


def measure_rss(args) -> list[dict]:
    """Peak memory of streaming inference over a memory-mapped int16 recording, for each of
    --rss-seconds, each in a fresh subprocess of this script (--rss-child)."""
    if not args.rss_seconds:
        return []
    print("Peak memory, streaming over a memory-mapped int16 .npy (fresh subprocess each):")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
        path = Path(tmp) / "traces.npy"
        t0 = time.perf_counter()
        write_int16_recording(path, max(args.rss_seconds), args.channels)
        print(f"  wrote {path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s")
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
    return rows


def measure_peak(args) -> dict:
    """The run's reference: JAX's dense fp32 matmul peak (best of --repeats per shape)."""
    print("Dense matmul peak (this run):")
    peaks = matmul_peak_gflops(args.repeats, args.max_wait)
    for shape, gflops in peaks.items():
        if shape != "peak":
            m, k, n = shape.split("x")
            print(f"  matmul [{m},{k}]x[{k},{n}] fp32: {gflops:6.1f} GFLOP/s   ({load()})", flush=True)
    return peaks


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child[0], float(args.rss_child[1]), args.chunk_steps)
        return

    from esort_jax import infer

    overrides = {k: v for k, v in (("block_steps", args.block_steps), ("segment", args.segment)) if v}
    config = infer.InferenceConfig(**{"chunk_steps": args.chunk_steps, **overrides})
    description = machine()
    print(f"bench_infer: {args.channels} channels, {args.units} units, {FS / 1000:.0f} kHz; "
          f"{describe_machine(description)}; {config}")
    print(f"  start ({load()})", flush=True)
    peaks = measure_peak(args)
    model = random_model(args.channels, args.units)
    params = infer.fold_batchnorm(model)
    print(f"Network: {params.flops_per_step() / 1e6:.3f} MFLOP per sample (window {params.window}, features "
          f"{params.temporal_features}, {params.spatial_features})")
    figures = Figures(params.flops_per_step(), peaks["peak"])
    native_ok = infer.InferenceConfig().resolve_kernel(params).kernel == "native"
    ratios = time_kernels(figures, params, config, args, native_ok)
    traces = noise(int(args.seconds * FS), args.channels, seed=2)
    time_end_to_end(figures, params, traces, config, args, native_ok)
    accuracy = bfloat16_accuracy(params, traces, config)
    ratios.update(time_naive(figures, model, params, traces, config, args))
    time_with_postprocess(figures, params, traces, config, args)
    rss = measure_rss(args)
    print(f"  end ({load()})")
    if args.out:
        result = {"machine": description, "config": dataclasses.asdict(config), "matmul": peaks,
                  "figures": figures.timed, **ratios, "bfloat16_accuracy": accuracy, "rss": rss,
                  "load_end": load_average()}
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
