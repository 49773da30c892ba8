"""The sorting benchmark's measurements (entry point: experiments/benchmark.py, config
conf/benchmark.yaml): streamed inference, post-processing and the whole sort of one recording,
against the dense matmul peak and two naive references measured in the same run, and the peak
memory of sorting recordings of two lengths in fresh processes.

Every timed run of inference and of sorting follows its own measurement of the matmul peak
(`paired_timings`): on a shared machine the peak moves by tens of percent within minutes. The
figures keep the keys the benchmark has always written (the best run's, for comparison with
earlier measurements) and add `<key>_median` / `<key>_range` (median and [min, max] over runs),
the figures to quote. Naive references (one window per call; the Flax model on materialised
windows in batches of 256, the same FLOPs as the convolution form) are timed once after a
warm-up on short spans, as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np

from esort_jax.config import to_dict
from esort_jax.infer import InferenceConfig, InferenceParams, iter_probabilities, naive_logits, predict_probabilities
from esort_jax.postprocess import PostprocessConfig, find_spikes
from esort_jax.recording import Recording, Sorting
from esort_jax.runtime.benchmarking import (
    child_peak_rss_mb, load_average, machine, matmul_peak_gflops, paired_timings, ratio_spread, spread, timings,
)
from esort_jax.sort import sort_recording

__all__ = [
    "SortBenchmarkConfig", "BenchmarkNetwork", "load_network", "train_network", "measure_sort", "print_figures",
]

Stage = Callable[[str], ContextManager]


@dataclasses.dataclass(frozen=True)
class SortBenchmarkConfig:
    """The benchmark's own settings (conf/benchmark.yaml's top-level keys)."""

    checkpoint: str | None = None       # a trained network; None: train one briefly on the recording
    train_k: int = 20                   # labelled spikes per unit for that network
    train_epochs: int = 10
    naive_seconds: float = 1.0          # span timed with the Flax model on materialised windows
    naive_per_window_seconds: float = 0.1   # span timed window by window (one window per call)
    repeats: int = 3                    # timed runs after a warm-up, each after its own matmul peak
    max_wait_s: float = 20.0            # per timing, wait up to this long for idle CPUs
    rss_durations: tuple[float, ...] = (30.0, 300.0)   # seconds sorted in fresh processes


@dataclasses.dataclass(frozen=True)
class BenchmarkNetwork:
    """The network being timed: the eval-mode Flax model (the batched naive reference runs it),
    its folded parameters, the threshold chosen for it (None: the post-processing config's) and
    where its weights came from."""

    model: Any
    params: InferenceParams
    threshold: float | None
    weights: str


def load_network(checkpoint: str) -> BenchmarkNetwork:
    """A saved network (eval mode), thresholded by the post-processing config."""
    from esort_jax import checkpoint as ckpt
    from esort_jax.infer import fold_batchnorm

    model, _ = ckpt.load_model(str(checkpoint))
    model.eval()
    return BenchmarkNetwork(model, fold_batchnorm(model), None, "checkpoint")


def train_network(recording: Recording, truth: Sorting, model_config, config: SortBenchmarkConfig,
                  seed: int) -> BenchmarkNetwork:
    """A network trained briefly on the recording's first half (K labelled spikes per unit, from
    scratch) with its threshold chosen on the training half's validation part: its spike output
    is a sorter's (a random network's noisy traces give hundreds of peaks per unit per second,
    which makes neither post-processing nor memory realistic)."""
    from esort_jax.pipeline import PipelineConfig, choose, fit
    from esort_jax.train import TrainConfig
    from esort_jax.windows import WindowConfig

    pipeline = PipelineConfig(
        model=model_config, windows=WindowConfig(spikes_per_unit=int(config.train_k), short_units="keep_all"),
        train=TrainConfig(epochs=int(config.train_epochs), progress=False),
    )
    fitted = fit(recording, truth, pipeline, seed=seed)
    threshold, _ = choose(fitted, recording, truth, pipeline)
    weights = f"trained from scratch, K={config.train_k}, {config.train_epochs} epochs"
    return BenchmarkNetwork(fitted.model, fitted.params, threshold, weights)


def _with_rates(runs: list[dict], flops: float, duration_s: float) -> list[dict]:
    """Add realtime_factor, gflops and fraction_of_peak (against the run's own peak) to each run."""
    for r in runs:
        r["realtime_factor"] = duration_s / r["seconds"]
        r["gflops"] = flops / r["seconds"] / 1e9
        r["fraction_of_peak"] = r["gflops"] / r["peak_gflops"]
    return runs


def _time_inference(params, recording, infer: InferenceConfig, config: SortBenchmarkConfig, flops: float):
    """Streamed inference, nothing kept: one dict per timed run (see paired_timings)."""

    def infer_all():
        for _ in iter_probabilities(params, recording, infer):
            pass

    runs = paired_timings(infer_all, config.repeats, config.max_wait_s)
    return _with_rates(runs, flops, recording.duration_s)


def _time_postprocess(params, recording, infer, postprocess, threshold, config: SortBenchmarkConfig,
                      stage: Stage):
    """Post-processing alone on the whole probability traces (computed first, outside the stage):
    wall seconds per timed run."""
    p_NxT = predict_probabilities(params, recording, infer)
    with stage("postprocess"):
        return timings(
            lambda: find_spikes(p_NxT, sampling_frequency=recording.sampling_frequency, config=postprocess,
                                threshold=threshold, sample_offset=params.anchor),
            config.repeats, config.max_wait_s,
        )


def _time_sort(params, recording, infer, postprocess, threshold, config: SortBenchmarkConfig, flops: float):
    """Inference and post-processing streamed together, as sort.py runs them: (runs, the last
    run's SortResult)."""
    last = {}

    def sort_all():
        last["result"] = sort_recording(params, recording, threshold=threshold,
                                        infer_config=infer, postprocess_config=postprocess)

    runs = paired_timings(sort_all, config.repeats, config.max_wait_s)
    return _with_rates(runs, flops, recording.duration_s), last["result"]


def _time_naive(network: BenchmarkNetwork, recording: Recording, config: SortBenchmarkConfig) -> dict:
    """Real-time factors of the naive references on short spans, one timed run each after a
    warm-up: (1) window by window, one window per call of the folded network (what a per-window
    loop does); (2) the Flax model on materialised windows in batches of 256."""
    params, fs = network.params, recording.sampling_frequency
    out = {}
    for name, seconds, model, block in (
        ("naive_realtime_factor", config.naive_per_window_seconds, params, 1),
        ("naive_batched_realtime_factor", config.naive_seconds, network.model, 256),
    ):
        samples = int(float(seconds) * fs) + params.window - 1
        x = recording.read(0, samples)
        wall = min(timings(lambda: naive_logits(model, x, block_steps=block), 1, config.max_wait_s))
        out[name] = (samples - params.window + 1) / fs / wall
    return out


RSS_CHILD = """
import json, numpy as np
from data_gen import synthesize
from esort_jax.config import from_dict
from data_gen import SynthesisConfig
from esort_jax.infer import InferenceConfig, InferenceParams
from esort_jax.postprocess import PostprocessConfig
from esort_jax.sort import sort_recording
from esort_jax.runtime.host_memory import configure_host_allocator
configure_host_allocator()
spec = json.loads({spec!r})
recording, truth = synthesize(from_dict(SynthesisConfig, spec['data'], 'data'))
arrays = np.load(spec['params'])
params = InferenceParams(**{{k: arrays[k] for k in arrays.files if k != 'anchor'}}, anchor=int(arrays['anchor']))
result = sort_recording(params, recording, threshold=spec['threshold'],
                        infer_config=from_dict(InferenceConfig, spec['infer'], 'infer'),
                        postprocess_config=from_dict(PostprocessConfig, spec['postprocess'], 'postprocess'))
RESULT = {{'duration_s': recording.duration_s, 'sort_seconds': result.seconds, 'num_spikes': result.sorting.num_spikes}}
"""


def _peak_rss(network: BenchmarkNetwork, data, infer, postprocess, durations, workdir: Path) -> list[dict]:
    """Peak memory of sorting lazily synthesised recordings of each duration (`data` with its
    duration replaced), each in a fresh process; nothing is written to disk but the folded
    parameters, removed afterwards."""
    params = network.params
    params_path = Path(workdir) / "benchmark_params.npz"
    np.savez(params_path, anchor=params.anchor, **{
        f.name: np.asarray(getattr(params, f.name)) for f in dataclasses.fields(params) if f.name != "anchor"
    })
    threshold = network.threshold if network.threshold is not None else postprocess.effective_threshold
    rss = []
    try:
        for seconds in durations:
            spec = {"data": {**to_dict(data), "duration_s": float(seconds)}, "params": str(params_path),
                    "threshold": threshold, "infer": to_dict(infer), "postprocess": to_dict(postprocess)}
            rss.append(child_peak_rss_mb(RSS_CHILD.format(spec=json.dumps(spec))))
            print(f"[benchmark] peak RSS sorting {seconds:g} s: {rss[-1]['peak_rss_mb']:.0f} MB", flush=True)
    finally:
        params_path.unlink()
    return rss


def _kernel(infer: InferenceConfig, params: InferenceParams) -> str:
    return infer.resolve_kernel(params).kernel


def _no_stage(name: str) -> ContextManager:
    return contextlib.nullcontext()


def measure_sort(
    network: BenchmarkNetwork, recording: Recording, data, infer: InferenceConfig, postprocess: PostprocessConfig,
    config: SortBenchmarkConfig, *, workdir: str | Path, stage: Stage = _no_stage,
) -> dict:
    """Every figure of the sorting benchmark for `network` on `recording` (synthesised from
    `data`, whose duration the peak-memory children replace), in the order: matmul peak,
    inference (and the XLA-only path when the native kernel runs), post-processing, the sort,
    naive references, peak memory. `stage(name)` times each part (e.g. Run.stage); the
    folded parameters are written to `workdir` for the peak-memory children."""
    params, threshold = network.params, network.threshold
    loads = {"start": load_average()}
    with stage("matmul peak"):
        peak = matmul_peak_gflops(repeats=max(config.repeats, 3), max_wait_s=config.max_wait_s)
    loads["matmul"] = load_average()
    flops = params.flops_per_step() * (recording.num_samples - params.window + 1)
    kernel = _kernel(infer, params)
    with stage(f"inference ({kernel} kernel)"):
        infer_runs = _time_inference(params, recording, infer, config, flops)
    loads["inference"] = load_average()
    xla_runs = None
    if kernel == "native":  # the XLA-only path as a reference (GPU/TPU, or no C++ compiler)
        with stage("inference (xla kernel, reference)"):
            xla_infer = dataclasses.replace(infer, kernel="xla")
            xla_runs = _time_inference(params, recording, xla_infer, config, flops)
        loads["inference_xla"] = load_average()
    post_seconds = _time_postprocess(params, recording, infer, postprocess, threshold, config, stage)
    loads["postprocess"] = load_average()
    with stage("sort"):
        sort_runs, result = _time_sort(params, recording, infer, postprocess, threshold, config, flops)
    loads["sort"] = load_average()
    with stage("naive"):
        naive = _time_naive(network, recording, config)
    loads["naive"] = load_average()
    with stage("peak memory"):
        rss = _peak_rss(network, data, infer, postprocess, config.rss_durations, workdir)
    figures = _speed_figures(recording.duration_s, infer_runs, post_seconds, sort_runs, naive)
    if xla_runs is not None:
        figures.update(_xla_figures(xla_runs, infer_runs))
    return {
        **figures,
        "inference_kernel": kernel,
        "postprocess_fraction_in_sort": result.postprocess_seconds / result.seconds,
        "peak_rss_mb_short": rss[0]["peak_rss_mb"], "peak_rss_mb_long": rss[-1]["peak_rss_mb"],
        "rss_durations_s": list(config.rss_durations), "rss_runs": rss,
        "n_channels": recording.num_channels, "n_units": int(params.num_units), "duration_s": recording.duration_s,
        "num_spikes_found": result.sorting.num_spikes, "matmul": peak,
        "inference_runs": infer_runs, "sort_runs": sort_runs, "postprocess_runs": post_seconds,
        "xla_kernel_runs": xla_runs, "load_average": loads, "machine": machine(),
        "weights": network.weights, "threshold": threshold,
    }


def _best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["seconds"])


def _median_range(name: str, values) -> dict:
    """{name_median: median, name_range: [min, max]} over runs."""
    s = spread(values)
    return {f"{name}_median": s.median, f"{name}_range": s.range()}


def _speed_figures(duration_s: float, infer_runs, post_seconds, sort_runs, naive: dict) -> dict:
    """The speed keys: the best run's (the keys results.json always had) and, for each of those
    that was a best-of, its median and range over runs. Post-processing's share comes from the
    stand-alone timings (on a shared machine the difference between a sort and an inference
    run is mostly run-to-run variation)."""
    best_infer, best_sort = _best(infer_runs), _best(sort_runs)
    t_infer, t_post = best_infer["seconds"], min(post_seconds)
    median_infer = spread([r["seconds"] for r in infer_runs]).median
    median_post = spread(post_seconds).median
    out = {
        "realtime_factor": duration_s / best_sort["seconds"],
        "inference_realtime_factor": duration_s / t_infer,
        "postprocess_realtime_factor": duration_s / t_post,
        "postprocess_fraction_of_total": t_post / (t_post + t_infer),
        "postprocess_fraction_of_total_median": median_post / (median_post + median_infer),
        "achieved_gflops": best_infer["gflops"],
        "matmul_peak_gflops": best_infer["peak_gflops"],
        "fraction_of_peak": best_infer["fraction_of_peak"],
        "sort_fraction_of_peak": best_sort["fraction_of_peak"],
        **naive,
        "conv_over_naive": (duration_s / t_infer) / naive["naive_realtime_factor"],
        "conv_over_naive_median": (duration_s / median_infer) / naive["naive_realtime_factor"],
        "conv_over_naive_batched": (duration_s / t_infer) / naive["naive_batched_realtime_factor"],
        "conv_over_naive_batched_median": (duration_s / median_infer) / naive["naive_batched_realtime_factor"],
    }
    for key, runs, field in (
        ("realtime_factor", sort_runs, "realtime_factor"), ("sort_fraction_of_peak", sort_runs, "fraction_of_peak"),
        ("inference_realtime_factor", infer_runs, "realtime_factor"), ("achieved_gflops", infer_runs, "gflops"),
        ("matmul_peak_gflops", infer_runs, "peak_gflops"), ("fraction_of_peak", infer_runs, "fraction_of_peak"),
    ):
        out.update(_median_range(key, [r[field] for r in runs]))
    out.update(_median_range("postprocess_realtime_factor", [duration_s / t for t in post_seconds]))
    return out


def _xla_figures(xla_runs: list[dict], native_runs: list[dict]) -> dict:
    """The XLA-only inference path timed the same way: best run, median and range, and native's
    speed-up over it (best / best as before; ratio of medians with the range over run pairs)."""
    best_xla = _best(xla_runs)
    speedup = ratio_spread([r["seconds"] for r in xla_runs], [r["seconds"] for r in native_runs])
    return {
        "xla_kernel_inference_realtime_factor": best_xla["realtime_factor"],
        "xla_kernel_fraction_of_peak": best_xla["fraction_of_peak"],
        "native_over_xla_kernel": best_xla["seconds"] / _best(native_runs)["seconds"],
        **_median_range("xla_kernel_inference_realtime_factor", [r["realtime_factor"] for r in xla_runs]),
        **_median_range("xla_kernel_fraction_of_peak", [r["fraction_of_peak"] for r in xla_runs]),
        "native_over_xla_kernel_median": speedup.median, "native_over_xla_kernel_range": speedup.range(),
    }


PRINTED = [
    "realtime_factor", "inference_realtime_factor", "postprocess_realtime_factor", "postprocess_fraction_of_total",
    "postprocess_fraction_in_sort", "achieved_gflops", "matmul_peak_gflops", "fraction_of_peak",
    "sort_fraction_of_peak", "naive_realtime_factor", "conv_over_naive", "naive_batched_realtime_factor",
    "conv_over_naive_batched", "peak_rss_mb_short", "peak_rss_mb_long", "xla_kernel_inference_realtime_factor",
    "xla_kernel_fraction_of_peak", "native_over_xla_kernel",
]


def print_figures(figures: dict) -> None:
    """The figures as the benchmark prints them: median [min–max] over runs where there were
    several, the single value otherwise (naive references, memory); then every timed run with
    the peak measured just before it, and the load averages."""
    print(f"  inference kernel: {figures['inference_kernel']}; figures: median [min–max] over "
          f"{len(figures['inference_runs'])} runs")
    for key in (k for k in PRINTED if k in figures):
        low_high = figures.get(f"{key}_range")
        if low_high is not None:
            print(f"  {key:40s} {figures[key + '_median']:10.3f} [{low_high[0]:.3f}–{low_high[1]:.3f}]")
        else:
            print(f"  {key:40s} {figures.get(key + '_median', figures[key]):10.3f}")
    for name, runs in (("inference", figures["inference_runs"]), ("inference, xla kernel", figures["xla_kernel_runs"]),
                       ("sort", figures["sort_runs"])):
        print(f"  {name} runs: " + ", ".join(
            f"{r['realtime_factor']:.3f}x at peak {r['peak_gflops']:.0f} ({r['fraction_of_peak']:.0%})"
            for r in runs or []))
    print(f"  load averages: {figures['load_average']}")
