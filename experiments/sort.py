"""Sort a recording (folder, MEArec .h5, SpikeInterface folder, or synthesised) with a trained
network, write the spikes, and score them when the recording has ground truth.

    python experiments/sort.py recording.path=<recording>.h5 checkpoint=<finetune run>/checkpoint
    python experiments/sort.py recording.path=... checkpoint=... span=[10,70] threshold=1.2

The recording must fit the network (channels, sampling rate, at least one window); it is
preprocessed as the network's training data was (`preprocess=checkpoint`, the settings saved by
sort_real / esort_from_labels; the causal filter of finetune.py causal_preprocess=...) or used
as given (`preprocess=none`). The threshold is the one
chosen on the network's training region (its sorting_defaults.json) unless `threshold` is given.

Writes into the run folder: sorting/sorting.npz (samples, unit ids; esort_jax.io.read_sorting_npz
reads it), sorting/scores.npy (each spike's probability peak), sorting/si/ (a SpikeInterface
sorting folder: spikeinterface.load(...)) and results.json (counts, timing; metrics when the
recording has ground truth).
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from esort_jax import checkpoint as ckpt
from esort_jax.evaluate import EvaluationConfig
from esort_jax.infer import InferenceConfig, fold_batchnorm
from esort_jax.io import write_sorting_npz
from esort_jax.io.atomic import atomic_folder
from esort_jax.pipeline import PipelineConfig, check_unit_ids, score
from esort_jax.postprocess import PostprocessConfig
from esort_jax.realdata.preprocess import preprocess_as_trained
from esort_jax.report.tables import evaluation_table
from esort_jax.sort import SortResult, check_fine_tuned, check_recording_fits, saved_threshold, sort_recording
from experiments._common import Run, prepare_process
from experiments._data import obtain_recording
from experiments._plans import SortPlan, read_plan


def _write_sorting(folder: Path, result: SortResult) -> Path:
    """sorting.npz, scores.npy and si/ (a SpikeInterface sorting folder) into `folder`, atomically."""
    from esort_jax.io.spikeinterface import to_spikeinterface_sorting

    with atomic_folder(folder, overwrite=True) as tmp:
        write_sorting_npz(tmp / "sorting.npz", result.sorting)
        np.save(tmp / "scores.npy", result.scores)
        to_spikeinterface_sorting(result.sorting).save(folder=tmp / "si")
    return folder


def _causal_as_trained(recording, extra: dict, mode: str, info: dict):
    """The online sorter's causal preprocessing, from the recording's first sample, when the
    network was trained on it (finetune.py causal_preprocess=...; recorded in its checkpoint)."""
    from esort_jax.config import from_dict
    from esort_jax.online.causal import EXTRA_KEY, CausalPreprocessConfig, causal_preprocess

    if mode == "none" or not extra.get(EXTRA_KEY):
        return recording
    info["causal_preprocess"] = extra[EXTRA_KEY]
    return causal_preprocess(recording, from_dict(CausalPreprocessConfig, extra[EXTRA_KEY], where=EXTRA_KEY))


@hydra.main(version_base=None, config_path="../conf", config_name="sort")
def main(cfg: DictConfig) -> dict:
    with Run(cfg, "sort") as run:
        config = PipelineConfig(infer=run.typed(InferenceConfig, "infer"),
                                postprocess=run.typed(PostprocessConfig, "postprocess"),
                                evaluation=run.typed(EvaluationConfig, "evaluation"))
        plan = read_plan(SortPlan, cfg)  # checkpoint, threshold, span, preprocess
        checkpoint = plan.folder
        check_fine_tuned(ckpt.read_metadata(checkpoint), f"checkpoint: {checkpoint}")  # not a pretrained network
        threshold = plan.threshold if plan.threshold is not None else saved_threshold(checkpoint)
        with run.stage("load model"):  # verified (checksums, finite) before any other work
            model, meta = ckpt.load_model(checkpoint)
        recording, truth, info = obtain_recording(run, "recording")
        check_recording_fits(meta, recording, f"checkpoint: {checkpoint}")
        if truth is not None:  # the network's units must be units of the truth it is scored against
            check_unit_ids(meta.unit_ids, truth)
        recording = preprocess_as_trained(recording, meta.extra.get("preprocess"), plan.preprocess,
                                          where=f"{checkpoint}/metadata.json extra.preprocess")
        info["preprocess"] = recording.metadata.get("preprocess", [])
        recording = _causal_as_trained(recording, meta.extra, plan.preprocess, info)
        start, stop = plan.samples(recording)
        params = fold_batchnorm(model)  # load_model leaves it in eval mode
        with run.stage("sort"):
            result = sort_recording(params, recording, meta.unit_ids, threshold=threshold, infer_config=config.infer,
                                    postprocess_config=config.postprocess, start=start, stop=stop)
        out = _write_sorting(run.dir / "sorting", result)
        summary = result.summary()
        run.results.update(recording=info, checkpoint=str(checkpoint), sorting_path=str(out), **summary)
        if truth is not None:
            scored = score(result, truth, config.replace(model=meta.model_config), identities="known")
            run.results["metrics"] = scored.to_dict()
            print(evaluation_table(scored))
        duration, seconds = summary["duration_s"], summary["sort_seconds"]
        print(f"[sort] {summary['num_spikes']} spikes of {summary['num_units']} units in {duration:.1f} s "
              f"of recording, {seconds:.2f} s ({duration / max(seconds, 1e-9):.1f}x real time) -> {out}")
    return run.results


if __name__ == "__main__":
    prepare_process()
    main()
