"""Stages shared by the experiments: a (cached) pretrained checkpoint, and one fine-tuning arm.

Both take typed configs; `run` (experiments._common.Run) supplies timing, logging and the run
folder.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from esort_jax import checkpoint as ckpt
from esort_jax.runtime.cache import cached
from esort_jax.config import to_dict
from esort_jax.infer import InferenceConfig
from esort_jax.io.atomic import atomic_folder
from esort_jax.model import ModelConfig
from esort_jax.pipeline import EvaluationConfig, Outcome, fit, sort_and_evaluate
from esort_jax.postprocess import PostprocessConfig
from esort_jax.recording import Recording, Sorting
from esort_jax.train import TrainConfig
from esort_jax.transfer import TransferConfig
from esort_jax.windows import WindowConfig

__all__ = [
    "pretrain", "cached_pretrain", "source_synthesis", "on_recording_geometry", "pretrained_on_source", "run_arm",
    "epoch_logger",
]


def epoch_logger(run, prefix: str):
    """A train callback that logs each epoch's metrics under `prefix/`."""
    step = {"value": 0}

    def callback(epoch: int, metrics: dict) -> None:
        flat = {f"{prefix}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        flat[f"{prefix}/epoch"] = epoch
        run.logger.log(flat, step=None)
        step["value"] += 1

    return callback


def pretrain(
    run,
    recording: Recording,
    labels: Sorting,
    model: ModelConfig,
    windows: WindowConfig,
    train: TrainConfig,
    *,
    seed: int,
    work_dir: Path,
    data_key: dict | None = None,
):
    """Train from scratch on a (source) recording; checkpoints go to work_dir (resumable)."""
    return fit(
        recording, labels, model, windows, train, TransferConfig(init="scratch"),
        seed=seed, run_dir=work_dir, callback=epoch_logger(run, "pretrain"),
        metadata_extra={"role": "pretrain", "data": data_key or {}},
    )


def cached_pretrain(
    run,
    recording: Recording,
    labels: Sorting,
    model: ModelConfig,
    windows: WindowConfig,
    train: TrainConfig,
    *,
    seed: int,
    data_key: dict,
) -> tuple[Path, bool, dict]:
    """A pretrained checkpoint keyed by (data, model, windows, train, seed): reused across runs.

    Training runs in `<cache>/pretrain_work/<hash>` (a killed run resumes there); the final
    checkpoint is then copied atomically to `<cache>/checkpoints/<hash>`.
    Returns (checkpoint path, cache hit, training summary).
    """
    train_key = {k: v for k, v in to_dict(train).items() if k not in ("progress", "log_every_steps")}
    key = {
        "role": "pretrain",
        "checkpoint_format": ckpt.FORMAT_VERSION,  # a layout change must not reuse old checkpoints
        "data": data_key,
        "model": to_dict(model),
        "windows": to_dict(windows),
        "train": train_key,
        "seed": seed,
    }
    summary: dict = {}

    def build(path: Path) -> None:
        work = Path(run.cfg.cache_dir).expanduser().resolve() / "pretrain_work" / path.name
        fitted = pretrain(run, recording, labels, model, windows, train, seed=seed, work_dir=work, data_key=data_key)
        summary.update(_train_summary(fitted))
        with atomic_folder(path) as tmp:
            shutil.copytree(fitted.train_result.checkpoint, tmp, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)

    with run.stage("pretrain"):
        path, hit = cached(
            run.cfg.cache_dir, "checkpoints", key, build, force=bool(run.cfg.get("force_rebuild", False))
        )
    return path, hit, summary


def source_synthesis(run, cfg, target: Recording, target_info: dict):
    """The pretraining source's synthesis config from cfg.source.data, on the target's own probe
    geometry (and sampling rate) when the target is a file and source.match_target_geometry;
    None when the source is a file (cfg.source.path)."""
    from data_gen import SynthesisConfig
    from omegaconf import OmegaConf

    from esort_jax.config import from_dict
    from experiments._common import to_container

    if cfg.source.get("path") is not None:
        return None
    data = from_dict(SynthesisConfig, to_container(OmegaConf.select(cfg, "source.data")), "source.data")
    if target_info["source"] == "file" and cfg.source.match_target_geometry:
        data = on_recording_geometry(data, target)
        print(f"[{run.experiment}] source synthesised on the target's geometry ({target.num_channels} sites)")
    return data


def on_recording_geometry(data, recording: Recording):
    """`data` (a SynthesisConfig) on `recording`'s channel positions and sampling rate: all its
    sites, whatever block (n_channels / first_channel) the config selected from a named probe."""
    positions = tuple(tuple(float(v) for v in p) for p in recording.channel_positions)
    return dataclasses.replace(
        data,
        probe=dataclasses.replace(data.probe, positions_um=positions, n_channels=None, first_channel=0),
        sampling_frequency=recording.sampling_frequency,
    )


def pretrained_on_source(
    run,
    cfg,
    target: Recording,
    target_info: dict,
    model: ModelConfig,
    windows: WindowConfig,
    train: TrainConfig,
    *,
    seed: int,
) -> tuple[Path, dict]:
    """The source recording of `cfg.source` (loaded, or synthesised through the cache) and the
    network pretrained on it (cached). Returns (checkpoint, the `pretrain` entry of results.json:
    checkpoint, cache_hit, source, source_units and the training summary)."""
    from esort_jax.config import ConfigError
    from experiments._data import obtain_recording, synthesis_key

    source_data = source_synthesis(run, cfg, target, target_info)
    source, source_truth, source_info = obtain_recording(run, "source", data=source_data)
    if source_truth is None:
        raise ConfigError(f"source.path: {source_info.get('path')} has no ground truth to pretrain on")
    data_key = synthesis_key(source_data) if source_info["source"] == "synthesized" else {"path": source_info["path"]}
    checkpoint, hit, summary = cached_pretrain(
        run, source, source_truth, model, windows, train, seed=seed, data_key=data_key,
    )
    return checkpoint, {
        "checkpoint": str(checkpoint), "cache_hit": hit, "source": source_info,
        "source_units": source_truth.num_units, **summary,
    }


def _train_summary(fitted) -> dict:
    history = fitted.train_result.history
    last = history[-1] if history else {}
    return {
        "epochs": fitted.train_result.epochs_completed,
        "train_windows": len(fitted.windows.train),
        "validation_windows": len(fitted.windows.validation),
        "num_units": fitted.windows.num_units,
        "final": {k: v for k, v in last.items() if isinstance(v, (int, float))},
    }


def run_arm(
    run,
    arm: str,
    recording: Recording,
    truth: Sorting,
    *,
    model: ModelConfig,
    windows: WindowConfig,
    train: TrainConfig,
    transfer: TransferConfig,
    evaluation: EvaluationConfig,
    infer: InferenceConfig,
    postprocess: PostprocessConfig,
    seed: int,
    labels: Sorting | None = None,
) -> tuple[dict, Outcome]:
    """Fine-tune one arm ('transfer' or 'scratch') on the target, sort its evaluation span,
    score it. Returns (metrics for results.json, Outcome)."""
    labels = truth if labels is None else labels
    arm_dir = run.dir / arm
    with run.stage(f"{arm}: fine-tune"):
        fitted = fit(
            recording, labels, model, windows, train, transfer,
            seed=seed, run_dir=arm_dir / "train", callback=epoch_logger(run, f"{arm}/finetune"),
            metadata_extra={"role": "finetune", "arm": arm},
        )
    with run.stage(f"{arm}: sort + evaluate"):
        outcome = sort_and_evaluate(
            fitted, recording, truth, evaluation,
            infer_config=infer, postprocess_config=postprocess, seed=seed,
        )
    metrics = outcome.metrics()
    metrics.update(
        arm=arm,
        init=transfer.init,
        freeze=transfer.freeze,
        k=windows.spikes_per_unit,
        checkpoint=str(fitted.train_result.checkpoint),
        transfer_report=fitted.transfer_report.to_dict(),
        short_units=fitted.windows.report.get("short_units"),
        training=_train_summary(fitted),
        threshold_curve=outcome.threshold_curve,
        per_unit=outcome.evaluation.per_unit(),
    )
    run.logger.log({f"{arm}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    _save_sorting(arm_dir / "sorting.npz", outcome)
    return metrics, outcome


def _save_sorting(path: Path, outcome: Outcome) -> None:
    from esort_jax.io import write_sorting_npz

    path.parent.mkdir(parents=True, exist_ok=True)
    write_sorting_npz(path, outcome.sort_result.sorting)


def checkpoint_summary(path: Path) -> dict:
    meta = ckpt.read_metadata(path)
    return {"path": str(path), "epoch": meta.epoch, "num_units": meta.num_units, "num_channels": meta.num_channels}


def replace(config, **changes):
    return dataclasses.replace(config, **changes)
