"""Glue between the Hydra configs and the pipeline stages shared by the experiments: the
pretrained network of `cfg.source` (cached), and one fine-tuning arm.

The work happens in the library (esort_jax.pipeline, esort_jax.runtime.artifacts); `run`
(experiments._common.Run) supplies the config, stage timing, logging and the run folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from esort_jax.config import ConfigError
from esort_jax.pipeline import Outcome, PipelineConfig, fit, sort_and_evaluate
from esort_jax.recording import Recording, Sorting
from esort_jax.runtime.artifacts import pretrained_checkpoint, synthesis_key
from experiments._data import obtain_recording, source_synthesis

__all__ = ["arm_config", "epoch_logger", "pretrained_on_source", "run_arm"]


def epoch_logger(run, prefix: str):
    """A train callback that logs each epoch's metrics under `prefix/`."""

    def callback(epoch: int, metrics: dict) -> None:
        flat = {f"{prefix}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        flat[f"{prefix}/epoch"] = epoch
        run.logger.log(flat, step=None)

    return callback


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
    with run.stage("pretrain"):
        checkpoint, hit, summary = pretrained_checkpoint(
            source, source_truth, config, seed=seed, cache_dir=run.cfg.cache_dir, data_key=data_key,
            force=bool(run.cfg.get("force_rebuild", False)), callback=epoch_logger(run, "pretrain"),
        )
    return checkpoint, {
        "checkpoint": str(checkpoint), "cache_hit": hit, "source": source_info,
        "source_units": source_truth.num_units, **summary,
    }


def arm_config(config: PipelineConfig, arm: str, checkpoint: Path | None, k: int | None = None) -> PipelineConfig:
    """`config` for one arm: the network starts from `checkpoint` ('transfer') or at random
    ('scratch'); with `k`, K labelled spikes per unit. Validated."""
    transfer = dataclasses.replace(config.transfer, init=arm, checkpoint=str(checkpoint) if arm == "transfer" else None)
    windows = config.windows if k is None else dataclasses.replace(config.windows, spikes_per_unit=k)
    config = config.replace(transfer=transfer, windows=windows)
    config.validate()
    return config


def run_arm(run, arm: str, recording: Recording, truth: Sorting, config: PipelineConfig, *, seed: int,
            labels: Sorting | None = None) -> tuple[dict, Outcome]:
    """Fine-tune one arm on `labels` (default: `truth`), sort the evaluation span, score it
    against `truth`. Writes `<run>/<arm>/train/` and `<arm>/sorting.npz`; returns (metrics for
    results.json, Outcome)."""
    from esort_jax.io import write_sorting_npz

    labels = truth if labels is None else labels
    arm_dir = run.dir / arm
    with run.stage(f"{arm}: fine-tune"):
        fitted = fit(recording, labels, config, seed=seed, run_dir=arm_dir / "train",
                     callback=epoch_logger(run, f"{arm}/finetune"),
                     metadata_extra={"role": "finetune", "arm": arm}, truth=truth)
    with run.stage(f"{arm}: sort + evaluate"):
        outcome = sort_and_evaluate(fitted, recording, truth, config, seed=seed, labels=labels)
    metrics = outcome.metrics()
    metrics.update(
        arm=arm, init=config.transfer.init, freeze=config.transfer.freeze, k=config.windows.spikes_per_unit,
        checkpoint=str(fitted.train_result.checkpoint), transfer_report=fitted.transfer_report.to_dict(),
        short_units=fitted.windows.report.get("short_units"), training=fitted.summary(),
        threshold_curve=outcome.threshold_curve, per_unit=outcome.evaluation.per_unit(),
    )
    run.logger.log({f"{arm}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    arm_dir.mkdir(parents=True, exist_ok=True)
    write_sorting_npz(arm_dir / "sorting.npz", outcome.sort_result.sorting)
    return metrics, outcome
