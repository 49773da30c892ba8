"""Sort a recording (folder, MEArec .h5, SpikeInterface folder, or synthesised) with a trained
network, write the spikes, and score them when the recording has ground truth.

    python experiments/sort.py recording.path=/data/rec.h5 checkpoint=<finetune run>/checkpoint

Output: <run folder>/sorting/spikes.npz (samples, unit_ids, scores; esort_jax.io.read_sorting_npz
reads it), <run folder>/sorting/si/ (spikeinterface.load(...) gives a sorting), results.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from esort_jax import checkpoint as ckpt
from esort_jax.config import ConfigError
from esort_jax.evaluate import EvaluationConfig, evaluate, scored_span
from esort_jax.infer import InferenceConfig, fold_batchnorm
from esort_jax.io import write_sorting_npz
from esort_jax.io.atomic import atomic_folder
from esort_jax.postprocess import PostprocessConfig
from esort_jax.realdata.preprocess import preprocess_as_trained
from esort_jax.report.tables import evaluation_table
from esort_jax.sort import SORTING_DEFAULTS, sort_recording
from experiments._common import Run, prepare_process
from experiments._data import obtain_recording


def check_fits(meta: ckpt.CheckpointMetadata, recording, checkpoint: Path) -> None:
    """The recording must have the checkpoint's channel count and sampling rate."""
    if recording.num_channels != meta.num_channels:
        raise ConfigError(
            f"checkpoint: {checkpoint} was trained on {meta.num_channels} channels but the recording "
            f"has {recording.num_channels}"
        )
    fs = meta.sampling_frequency
    if fs is not None and abs(fs - recording.sampling_frequency) > 1e-6 * fs:
        raise ConfigError(
            f"checkpoint: {checkpoint} was trained at {fs:g} Hz but the recording is sampled at "
            f"{recording.sampling_frequency:g} Hz"
        )
    if recording.num_samples < meta.model_config.window:
        raise ConfigError(
            f"recording: {recording.num_samples} samples is shorter than one window "
            f"({meta.model_config.window} samples)"
        )


@hydra.main(version_base=None, config_path="../conf", config_name="sort")
def main(cfg: DictConfig) -> dict:
    with Run(cfg, "sort") as run:
        infer = run.typed(InferenceConfig, "infer")
        postprocess = run.typed(PostprocessConfig, "postprocess")
        evaluation = run.typed(EvaluationConfig, "evaluation")
        checkpoint = Path(str(cfg.checkpoint)).expanduser()
        problem = ckpt.checkpoint_problem(checkpoint)
        if problem is not None:
            raise ConfigError(f"checkpoint: {problem}")
        with run.stage("load model"):  # verified (checksums, finite) before any other work
            model, meta = ckpt.load_model(checkpoint)
        threshold = cfg.get("threshold")
        defaults_file = checkpoint / SORTING_DEFAULTS
        if threshold is None and defaults_file.is_file():
            threshold = json.loads(defaults_file.read_text())["threshold"]
        recording, truth, info = obtain_recording(run, "recording")
        check_fits(meta, recording, checkpoint)
        recording = preprocess_as_trained(recording, meta.extra.get("preprocess"), str(cfg.get("preprocess", "checkpoint")),
                                          where=f"{checkpoint}/metadata.json extra.preprocess")
        info["preprocess"] = recording.metadata.get("preprocess", [])
        start, stop = 0, recording.num_samples
        if cfg.get("span") is not None:
            start, stop = (int(round(float(v) * recording.sampling_frequency)) for v in cfg.span)
            if not 0 <= start < stop <= recording.num_samples:
                raise ConfigError(f"span: {list(cfg.span)} s is outside the recording's {recording.duration_s:g} s")
        params = fold_batchnorm(model)  # load_model leaves it in eval mode
        with run.stage("sort"):
            result = sort_recording(
                params, recording, meta.unit_ids, threshold=threshold,
                infer_config=infer, postprocess_config=postprocess, start=start, stop=stop,
            )
        out = run.dir / "sorting"
        with atomic_folder(out, overwrite=True) as tmp:
            write_sorting_npz(tmp / "sorting.npz", result.sorting)
            np.save(tmp / "scores.npy", result.scores)
            from esort_jax.io.spikeinterface import to_spikeinterface_sorting

            to_spikeinterface_sorting(result.sorting).save(folder=tmp / "si")
        duration = (stop - start) / recording.sampling_frequency
        run.results.update(
            recording=info,
            checkpoint=str(checkpoint),
            sorting_path=str(out),
            threshold=result.threshold,
            num_spikes=result.sorting.num_spikes,
            num_units=int(result.sorting.num_units),
            duration_s=duration,
            sort_seconds=result.seconds,
            inference_seconds=result.inference_seconds,
            postprocess_seconds=result.postprocess_seconds,
            realtime_factor=duration / result.seconds if result.seconds else None,
        )
        if truth is not None:
            scored = evaluate(
                result.sorting, truth, tolerance_ms=evaluation.tolerance_ms, identities="known",
                span=scored_span((start, stop), window=meta.model_config.window, anchor=meta.model_config.anchor),
            )
            run.results["metrics"] = scored.to_dict()
            print(evaluation_table(scored))
        print(
            f"[sort] {result.sorting.num_spikes} spikes of {result.sorting.num_units} units in {duration:.1f} s "
            f"of recording, {result.seconds:.2f} s ({duration / max(result.seconds, 1e-9):.1f}x real time) -> {out}"
        )
    return run.results


if __name__ == "__main__":
    prepare_process()
    main()
