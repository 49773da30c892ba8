"""Sorting speed and memory on this machine: inference, post-processing, total, against the dense
matmul peak and naive window-by-window evaluation measured in the same run.

    python experiments/benchmark.py [checkpoint=...] [data.duration_s=30] [rss_durations=[30,300]]

The recording is synthesised (cached) at paper scale (NP1, 384 channels, 32 kHz, 100 units).
Without a checkpoint a network is first trained briefly on the recording's first half (K
labelled spikes per unit, from scratch) with its threshold chosen on the training half, so the
probability traces and the spike output are a sorter's (a random network's noisy traces give
hundreds of peaks per unit per second, which makes neither post-processing nor memory
realistic). Peak memory is measured in fresh processes sorting lazily synthesised recordings of
two lengths (nothing written to disk).

On a shared machine the matmul peak itself moves by tens of percent within minutes, so every
timed run of inference and of sorting is preceded by its own peak measurement; the reported
fraction of peak pairs the best run with the peak measured just before it (all runs are kept
in results.json). Two naive references: window by window (one window per call of the folded
network) and the Flax model on materialised windows in batches of 256 -- the second does the
same FLOPs as the convolution form, so only memory traffic separates them.
"""

from __future__ import annotations

import dataclasses
import json

import hydra
import numpy as np
from omegaconf import DictConfig

from data_gen import SynthesisConfig
from esort_jax import checkpoint as ckpt
from esort_jax.runtime.benchmarking import best_time, child_peak_rss_mb, load_average, matmul_peak_gflops, paired_timings
from esort_jax.config import to_dict
from esort_jax.infer import InferenceConfig, fold_batchnorm, iter_probabilities, naive_logits, predict_probabilities
from esort_jax.model import ModelConfig
from esort_jax.postprocess import PostprocessConfig, find_spikes
from esort_jax.sort import sort_recording
from experiments._common import Run, prepare_process


def benchmark_network(run, recording, truth, model_config: ModelConfig, cfg, seed: int):
    """A network trained briefly on the recording's first half (K labelled spikes per unit,
    from scratch) and its threshold chosen on the training half's validation part: its spike
    output is a sorter's, so post-processing and memory are measured on realistic traces."""
    from esort_jax.pipeline import EvaluationConfig, fit
    from esort_jax.sort import select_threshold
    from esort_jax.train import TrainConfig
    from esort_jax.transfer import TransferConfig
    from esort_jax.windows import WindowConfig

    fitted = fit(
        recording, truth, model_config,
        WindowConfig(spikes_per_unit=int(cfg.train_k), short_units="keep_all"),
        TrainConfig(epochs=int(cfg.train_epochs), progress=False), TransferConfig(init="scratch"),
        seed=seed,
    )
    model = fitted.model
    model.eval()
    params = fold_batchnorm(model)
    threshold, _ = select_threshold(
        params, recording, truth, fitted.windows.validation_span, EvaluationConfig().thresholds
    )
    return model, params, threshold


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


@hydra.main(version_base=None, config_path="../conf", config_name="benchmark")
def main(cfg: DictConfig) -> dict:
    with Run(cfg, "benchmark") as run:
        data = run.typed(SynthesisConfig, "data")
        infer = run.typed(InferenceConfig, "infer")
        postprocess = run.typed(PostprocessConfig, "postprocess")
        model_config = run.typed(ModelConfig, "model")
        repeats, wait = int(cfg.repeats), float(cfg.max_wait_s)
        recording, truth, info = _recording(run, data)
        fs, duration = recording.sampling_frequency, recording.duration_s
        with run.stage("network"):
            if cfg.get("checkpoint"):
                model, meta = ckpt.load_model(str(cfg.checkpoint))
                model.eval()
                params = fold_batchnorm(model)
                threshold = None
            else:
                model, params, threshold = benchmark_network(run, recording, truth, model_config, cfg, int(cfg.seed))
        loads = {"start": load_average()}
        with run.stage("matmul peak"):
            peak = matmul_peak_gflops(repeats=max(repeats, 3), max_wait_s=wait)
        loads["matmul"] = load_average()
        steps = recording.num_samples - params.window + 1
        flops = params.flops_per_step() * steps

        # Inference alone (streamed, nothing kept). Each timed run follows its own measurement of
        # the matmul peak: the fraction of peak compares figures taken under the same conditions.
        def infer_all():
            for _ in iter_probabilities(params, recording, infer):
                pass

        kernel = infer.resolve_kernel(params).kernel
        with run.stage(f"inference ({kernel} kernel)"):
            infer_runs = _with_rates(paired_timings(infer_all, repeats, wait), flops, duration)
        best_infer = min(infer_runs, key=lambda r: r["seconds"])
        t_infer = best_infer["seconds"]
        loads["inference"] = load_average()
        # The XLA-only path as a reference (what runs on GPU/TPU, or without a C++ compiler).
        xla_runs = None
        if kernel == "native":
            xla_infer = dataclasses.replace(infer, kernel="xla")

            def infer_all_xla():
                for _ in iter_probabilities(params, recording, xla_infer):
                    pass

            with run.stage("inference (xla kernel, reference)"):
                xla_runs = _with_rates(paired_timings(infer_all_xla, repeats, wait), flops, duration)
            loads["inference_xla"] = load_average()
        # Post-processing alone on the whole probability traces.
        p_NxT = predict_probabilities(params, recording, infer)
        with run.stage("postprocess"):
            t_post = best_time(
                lambda: find_spikes(p_NxT, sampling_frequency=fs, config=postprocess, threshold=threshold,
                                    sample_offset=params.anchor),
                repeats, wait,
            )
        del p_NxT
        loads["postprocess"] = load_average()
        # Both, streamed, as sort.py runs them.
        with run.stage("sort"):
            sorted_once = {}

            def sort_all():
                sorted_once["result"] = sort_recording(params, recording, threshold=threshold,
                                                       infer_config=infer, postprocess_config=postprocess)

            sort_runs = _with_rates(paired_timings(sort_all, repeats, wait), flops, duration)
        best_sort = min(sort_runs, key=lambda r: r["seconds"])
        t_total = best_sort["seconds"]
        loads["sort"] = load_average()
        # Naive references on short spans: (1) window by window, one window per call of the
        # folded network (what a per-window loop does, e.g. a data loader yielding windows);
        # (2) the Flax model on materialised windows in batches of 256 (same FLOPs as the
        # convolution form: only memory traffic differs).
        with run.stage("naive"):
            per_window_samples = int(float(cfg.naive_per_window_seconds) * fs) + params.window - 1
            x = recording.read(0, per_window_samples)
            t_window = best_time(lambda: naive_logits(params, x, block_steps=1), 1, wait)
            naive_rtf = (per_window_samples - params.window + 1) / fs / t_window
            batched_samples = int(float(cfg.naive_seconds) * fs) + params.window - 1
            x = recording.read(0, batched_samples)
            t_batched = best_time(lambda: naive_logits(model, x, block_steps=256), 1, wait)
            naive_batched_rtf = (batched_samples - params.window + 1) / fs / t_batched
        loads["naive"] = load_average()
        # Peak memory for two lengths, each in a fresh process.
        params_path = run.dir / "benchmark_params.npz"
        np.savez(params_path, anchor=params.anchor, **{
            k: np.asarray(getattr(params, k)) for k in
            ("k1_WxF1", "scale1_C", "shift1_CxF1", "k2_F1xF2", "scale2_C", "shift2_CxF2", "k3_CxF2xS", "b3_S", "k4_SxN", "b4_N")
        })
        rss = []
        with run.stage("peak memory"):
            for seconds in cfg.rss_durations:
                spec = {
                    "data": {**to_dict(data), "duration_s": float(seconds)},
                    "params": str(params_path),
                    "threshold": threshold if threshold is not None else postprocess.effective_threshold,
                    "infer": to_dict(infer),
                    "postprocess": to_dict(postprocess),
                }
                rss.append(child_peak_rss_mb(RSS_CHILD.format(spec=json.dumps(spec))))
                print(f"[benchmark] peak RSS sorting {seconds} s: {rss[-1]['peak_rss_mb']:.0f} MB", flush=True)
        params_path.unlink()
        result = sorted_once["result"]
        run.results.update(
            realtime_factor=duration / t_total,
            inference_realtime_factor=duration / t_infer,
            postprocess_realtime_factor=duration / t_post,
            # Post-processing's share from the stand-alone timings (best of each). The difference
            # between the best sort and best inference runs is not used: on a shared machine it
            # is mostly run-to-run variation. The share inside the streamed sort (timed per chunk
            # by sort_recording, last sort run) is reported beside it.
            postprocess_fraction_of_total=t_post / (t_post + t_infer),
            postprocess_fraction_in_sort=result.postprocess_seconds / result.seconds,
            achieved_gflops=best_infer["gflops"],
            matmul_peak_gflops=best_infer["peak_gflops"],
            fraction_of_peak=best_infer["fraction_of_peak"],
            sort_fraction_of_peak=best_sort["fraction_of_peak"],
            inference_kernel=kernel,
            naive_realtime_factor=naive_rtf,
            conv_over_naive=(duration / t_infer) / naive_rtf,
            naive_batched_realtime_factor=naive_batched_rtf,
            conv_over_naive_batched=(duration / t_infer) / naive_batched_rtf,
            peak_rss_mb_short=rss[0]["peak_rss_mb"],
            peak_rss_mb_long=rss[-1]["peak_rss_mb"],
            rss_durations_s=list(cfg.rss_durations),
            rss_runs=rss,
            n_channels=recording.num_channels,
            n_units=int(params.num_units),
            duration_s=duration,
            num_spikes_found=result.sorting.num_spikes,
            matmul=peak,
            inference_runs=infer_runs,
            sort_runs=sort_runs,
            load_average=loads,
            xla_kernel_runs=xla_runs,
            weights="checkpoint" if cfg.get("checkpoint") else f"trained from scratch, K={cfg.train_k}, {cfg.train_epochs} epochs",
            threshold=threshold,
            recording=info,
        )
        keys = ["realtime_factor", "inference_realtime_factor", "postprocess_realtime_factor",
                "postprocess_fraction_of_total", "postprocess_fraction_in_sort", "achieved_gflops", "matmul_peak_gflops",
                "fraction_of_peak",
                "sort_fraction_of_peak", "naive_realtime_factor", "conv_over_naive",
                "naive_batched_realtime_factor", "conv_over_naive_batched", "peak_rss_mb_short", "peak_rss_mb_long"]
        if xla_runs is not None:
            best_xla = min(xla_runs, key=lambda r: r["seconds"])
            run.results.update(
                xla_kernel_inference_realtime_factor=best_xla["realtime_factor"],
                xla_kernel_fraction_of_peak=best_xla["fraction_of_peak"],
                native_over_xla_kernel=best_xla["seconds"] / t_infer,
            )
            keys += ["xla_kernel_inference_realtime_factor", "xla_kernel_fraction_of_peak", "native_over_xla_kernel"]
        print(f"  inference kernel: {kernel}")
        for key in keys:
            print(f"  {key:32s} {run.results[key]:10.3f}")
        for name, runs in (("inference", infer_runs), ("inference, xla kernel", xla_runs or []), ("sort", sort_runs)):
            print(f"  {name} runs: " + ", ".join(
                f"{r['realtime_factor']:.3f}x at peak {r['peak_gflops']:.0f} ({r['fraction_of_peak']:.0%})" for r in runs))
        print(f"  load averages: {loads}")
    return run.results


def _with_rates(runs: list[dict], flops: float, duration_s: float) -> list[dict]:
    """Add realtime_factor, gflops and fraction_of_peak (against the run's own peak) to each run."""
    for r in runs:
        r["realtime_factor"] = duration_s / r["seconds"]
        r["gflops"] = flops / r["seconds"] / 1e9
        r["fraction_of_peak"] = r["gflops"] / r["peak_gflops"]
    return runs


def _recording(run, data: SynthesisConfig):
    from esort_jax.runtime.cache import cached
    from esort_jax.io import read_recording_folder
    from data_gen import write_synthetic
    from experiments._data import synthesis_key

    with run.stage("synthesize"):
        folder, hit = cached(run.cfg.cache_dir, "recordings", synthesis_key(data),
                             lambda target: write_synthetic(data, target, progress=True))
    recording, truth = read_recording_folder(folder)
    return recording, truth, {"path": str(folder), "cache_hit": hit}


if __name__ == "__main__":
    prepare_process()
    main()
