"""Sorting speed and memory on this machine: inference, post-processing, total, against the dense
matmul peak and naive window-by-window evaluation measured in the same run.

    python experiments/benchmark.py [checkpoint=...] [data.duration_s=30] [rss_durations=[30,300]]

The recording is synthesised (cached) at paper scale (NP1, 384 channels, 32 kHz, 100 units).
Without a checkpoint a network is first trained briefly on the recording's first half (K
labelled spikes per unit, from scratch) with its threshold chosen on the training half, so the
probability traces and the spike output are a sorter's. Peak memory is measured in fresh
processes sorting lazily synthesised recordings of two lengths (nothing written to disk).

The measurements are esort_jax.runtime.sort_benchmark's (how each figure is taken, which run
each key describes); conf/benchmark.yaml lists the results.json keys.
"""

from __future__ import annotations

import dataclasses

import hydra
from omegaconf import DictConfig

from data_gen import SynthesisConfig
from esort_jax.config import from_dict
from esort_jax.infer import InferenceConfig
from esort_jax.model import ModelConfig
from esort_jax.postprocess import PostprocessConfig
from esort_jax.runtime.sort_benchmark import (
    SortBenchmarkConfig, load_network, measure_sort, print_figures, train_network,
)
from experiments._common import Run, prepare_process, to_container


@hydra.main(version_base=None, config_path="../conf", config_name="benchmark")
def main(cfg: DictConfig) -> dict:
    with Run(cfg, "benchmark") as run:
        data = run.typed(SynthesisConfig, "data")
        infer = run.typed(InferenceConfig, "infer")
        postprocess = run.typed(PostprocessConfig, "postprocess")
        model_config = run.typed(ModelConfig, "model")
        settings = from_dict(SortBenchmarkConfig, {
            f.name: to_container(cfg.get(f.name)) for f in dataclasses.fields(SortBenchmarkConfig) if f.name in cfg
        })
        recording, truth, info = _recording(run, data)
        with run.stage("network"):
            if settings.checkpoint:
                network = load_network(settings.checkpoint)
            else:
                network = train_network(recording, truth, model_config, settings, int(cfg.seed))
        figures = measure_sort(network, recording, data, infer, postprocess, settings,
                               workdir=run.dir, stage=run.stage)
        run.results.update(figures, recording=info)
        print_figures(run.results)
    return run.results


def _recording(run, data: SynthesisConfig):
    """The synthesised recording from the content-addressed cache: (recording, truth, info)."""
    from esort_jax.io import read_recording_folder
    from esort_jax.runtime.artifacts import synthesised_recording

    with run.stage("synthesize"):
        folder, hit = synthesised_recording(data, run.cfg.cache_dir)
    recording, truth = read_recording_folder(folder)
    return recording, truth, {"path": str(folder), "cache_hit": hit}


if __name__ == "__main__":
    prepare_process()
    main()
