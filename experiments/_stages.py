"""Glue between the Hydra configs and the pipeline stages shared by the experiments: the
pretraining and fine-tuning configs, the pretrained network (cached) of `cfg.source` or of a
source synthesised on a real recording's geometry, and the fine-tuning arms.

The work happens in the library (esort_jax.pipeline, esort_jax.runtime.artifacts); `run`
(experiments._common.Run) supplies the config, stage timing, logging and the run folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from data_gen import SynthesisConfig
from esort_jax.config import ConfigError, to_dict
from esort_jax.pipeline import Fitted, Outcome, PipelineConfig, choose, fit, label_accounting, sort_and_evaluate
from esort_jax.realdata.preprocess import PreprocessConfig, as_recording
from esort_jax.report.snr import snr_summary, unit_snr
from esort_jax.recording import Recording, Sorting
from esort_jax.runtime.artifacts import pretrained_checkpoint, synthesis_key
from esort_jax.runtime.distributed import is_primary
from esort_jax.threshold import SWEEP_METRICS
from experiments._common import pipeline_config
from experiments._data import obtain_recording, source_synthesis
from experiments._report import log_scalars

_SNR: dict = {}  # per (recording, truth) object pair: every arm of a run scores the same units

__all__ = ["arm_config", "arm_pipelines", "arms_at_ks", "epoch_logger", "pretrain_for_arms",
           "pretrained_on_geometry", "pretrained_on_source", "run_arm", "target_snr", "validation_scores"]


def arm_pipelines(cfg) -> tuple[PipelineConfig, PipelineConfig]:
    """(pretraining, fine-tuning) PipelineConfig of a transfer-style config: windows and training
    from pretrain.* and finetune.*, the transfer settings from finetune.transfer."""
    return (pipeline_config(cfg, windows="pretrain.windows", train="pretrain.train", transfer="finetune.transfer"),
            pipeline_config(cfg, windows="finetune.windows", train="finetune.train", transfer="finetune.transfer"))


def epoch_logger(run, prefix: str):
    """A train callback that logs each epoch's metrics under `prefix/`."""

    def callback(epoch: int, metrics: dict) -> None:
        flat = {f"{prefix}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        flat[f"{prefix}/epoch"] = epoch
        run.logger.log(flat, step=None)

    return callback


def _pretrain(run, source: Recording, truth: Sorting, info: dict, data_key: dict, config: PipelineConfig,
              seed: int) -> tuple[Path, dict]:
    """The network pretrained on `source` (cached by `data_key` and the config) and its entry."""
    if run.process["process_count"] > 1:  # one process builds a cache entry while the others wait
        raise ConfigError("distributed: pretraining through the shared cache runs in one process; pretrain "
                          "under jax.distributed with experiments/pretrain.py and fine-tune from its checkpoint "
                          "with experiments/finetune.py (docs/clusters.md)")
    with run.stage("pretrain"):
        checkpoint, hit, summary = pretrained_checkpoint(
            source, truth, config, seed=seed, cache_dir=run.cfg.cache_dir, data_key=data_key,
            force=bool(run.cfg.get("force_rebuild", False)), callback=epoch_logger(run, "pretrain"),
        )
    return checkpoint, {"checkpoint": str(checkpoint), "cache_hit": hit, "source": info,
                        "source_units": truth.num_units, **summary}


def pretrained_on_source(run, target: Recording, target_info: dict, config: PipelineConfig, *,
                         seed: int, cfg=None) -> tuple[Path, dict]:
    """The source recording of `cfg.source` (loaded, or synthesised through the cache; on the
    target's geometry when asked) and the network pretrained on it with `config` (cached).
    `cfg` defaults to the run's. Returns (checkpoint, the `pretrain` entry of results.json)."""
    source_data = source_synthesis(run, target, target_info, cfg)
    source, source_truth, source_info = obtain_recording(run, "source", data=source_data)
    if source_truth is None:
        raise ConfigError(f"source.path: {source_info.get('path')} has no ground truth to pretrain on")
    data_key = synthesis_key(source_data) if source_info["source"] == "synthesized" else {"path": source_info["path"]}
    return _pretrain(run, source, source_truth, source_info, data_key, config, seed)


def pretrained_on_geometry(run, recording: Recording, preprocess: PreprocessConfig, config: PipelineConfig, *,
                           seed: int) -> tuple[Path, dict]:
    """A network pretrained on a source synthesised (cfg.source.data) on `recording`'s probe
    geometry and sampling rate, preprocessed like it (cached by data, preprocessing, model,
    training, seed). Returns (checkpoint, the `pretrain` entry of results.json)."""
    if not np.all(np.isfinite(recording.channel_positions)):
        raise ConfigError(
            "checkpoint: the recording has no channel positions (no probe attached), so no source can be "
            "synthesised on its geometry; attach a probe (recording.probe), give a pretrained "
            "checkpoint, or use init=scratch"
        )
    data = run.typed(SynthesisConfig, "source.data").on_geometry(recording.channel_positions,
                                                                 recording.sampling_frequency)
    print(f"[{run.experiment}] source synthesised on the recording's geometry ({recording.num_channels} sites)")
    source, source_truth, source_info = obtain_recording(run, "source", data=data)
    data_key = synthesis_key(data)
    if preprocess.enabled:
        data_key = {**data_key, "preprocess": to_dict(preprocess)}
    return _pretrain(run, as_recording(source, preprocess), source_truth, source_info, data_key, config, seed)


def pretrain_for_arms(run, arms: Sequence[str], target: Recording, target_info: dict, config: PipelineConfig, *,
                      seed: int, cfg=None, into: dict | None = None) -> Path | None:
    """The checkpoint the 'transfer' arm starts from (`pretrained_on_source`; its entry goes to
    `into`['pretrain'], default results.json), or None when `arms` have no 'transfer'."""
    if "transfer" not in arms:
        return None
    checkpoint, entry = pretrained_on_source(run, target, target_info, config, seed=seed, cfg=cfg)
    (run.results if into is None else into)["pretrain"] = entry
    return checkpoint


def arm_config(config: PipelineConfig, arm: str, checkpoint: Path | None, k: int | None = None) -> PipelineConfig:
    """`config` for one arm: the network starts from `checkpoint` ('transfer') or at random
    ('scratch'); with `k`, K labelled spikes per unit. Validated."""
    transfer = dataclasses.replace(config.transfer, init=arm, checkpoint=str(checkpoint) if arm == "transfer" else None)
    windows = config.windows if k is None else dataclasses.replace(config.windows, spikes_per_unit=k)
    config = config.replace(transfer=transfer, windows=windows)
    config.validate()
    return config


def run_arm(run, arm: str, recording: Recording, truth: Sorting, config: PipelineConfig, *, seed: int,
            labels: Sorting | None = None, metadata_extra: dict | None = None) -> tuple[dict, Outcome]:
    """Fine-tune one arm on `labels` (default: `truth`), sort the evaluation span, score it
    against `truth` (`metadata_extra`: more for the checkpoint's metadata). Writes `<run>/<arm>/train/` and `<arm>/sorting.npz`; returns (metrics for
    results.json, Outcome)."""
    from esort_jax.io import write_sorting_npz

    labels = truth if labels is None else labels
    arm_dir = run.dir / arm
    with run.stage(f"{arm}: fine-tune"):
        fitted = fit(recording, labels, config, seed=seed, run_dir=arm_dir / "train",
                     callback=epoch_logger(run, f"{arm}/finetune"),
                     metadata_extra={"role": "finetune", "arm": arm, **(metadata_extra or {})}, truth=truth)
    with run.stage(f"{arm}: sort + evaluate"):
        outcome = sort_and_evaluate(fitted, recording, truth, config, seed=seed, labels=labels)
    metrics = outcome.metrics()
    metrics.update(
        validation=validation_scores(fitted, recording, labels, config, outcome.threshold, outcome.threshold_curve),
        arm=arm, init=config.transfer.init, freeze=config.transfer.freeze, k=config.windows.spikes_per_unit,
        checkpoint=str(fitted.train_result.checkpoint), transfer_report=fitted.transfer_report.to_dict(),
        short_units=fitted.windows.report.get("short_units"), training=fitted.summary(),
        threshold_curve=outcome.threshold_curve, per_unit=outcome.evaluation.per_unit(),
        **label_accounting(fitted, outcome.threshold_curve, config),
        **snr_summary(outcome.evaluation.per_unit(), target_snr(recording, truth), truth.unit_ids),
    )
    log_scalars(run, {arm: metrics})
    if is_primary():  # of several processes (distributed.mode), process 0 writes
        arm_dir.mkdir(parents=True, exist_ok=True)
        write_sorting_npz(arm_dir / "sorting.npz", outcome.sort_result.sorting)
    return metrics, outcome


def target_snr(recording: Recording, truth: Sorting) -> np.ndarray:
    """[N] SNR of the truth's units on `recording` (esort_jax.report.snr), computed once per pair."""
    key = (id(recording), id(truth))
    if key not in _SNR:
        _SNR[key] = (recording, truth, unit_snr(recording, truth))  # the objects keep their ids alive
    return _SNR[key][2]


def validation_scores(fitted: Fitted, recording: Recording, labels: Sorting, config: PipelineConfig,
                      threshold: float, curve: dict) -> dict:
    """The sorting's scores at `threshold` on the validation part of the training region, against
    the training labels: what a hyperparameter search optimises (`optimized_metric:
    <arm>.validation.accuracy_pooled`), never the evaluation span. `curve` is the threshold
    sweep's; with a fixed threshold (no sweep) the validation part is scored at it. With
    label_mode 'k_only' only the K labels are known: the held-out labelled spikes' pooled recall
    at the threshold (`heldout_recall`, from the 2-fold choice) is all there is to optimise."""
    if curve.get("rule") == "k_only_cv":
        index = curve["threshold"].index(float(threshold))
        return {"threshold": float(threshold), "rule": curve["rule"], "labels": curve["labels"],
                "num_spikes": curve["num_spikes"][index], "heldout_recall": curve["heldout_recall"][index]}
    if not curve:
        evaluation = dataclasses.replace(config.evaluation, threshold=None, thresholds=(float(threshold),))
        _, curve = choose(fitted, recording, labels, config.replace(evaluation=evaluation))
    index = curve["threshold"].index(float(threshold))
    return {"threshold": float(threshold), "span": curve["span"], "num_spikes": curve["num_spikes"][index],
            **{metric: curve[metric][index] for metric in SWEEP_METRICS}}


def arms_at_ks(run, prefix: str, recording: Recording, truth: Sorting, finetune: PipelineConfig,
               arms: Sequence[str], ks: Sequence[int], checkpoint: Path | None, *,
               seed: int) -> Iterator[tuple[int, str, dict, Outcome]]:
    """Every arm at every K (`run_arm` named `<prefix>k<K>/<arm>`): yields (K, arm, metrics,
    outcome) as each finishes."""
    for k in ks:
        for arm in arms:
            config = arm_config(finetune, arm, checkpoint, k)
            metrics, outcome = run_arm(run, f"{prefix}k{k}/{arm}", recording, truth, config, seed=seed)
            yield k, arm, metrics, outcome
