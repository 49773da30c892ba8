"""Expensive artefacts made once and shared through the content-addressed cache: synthesised
recordings and pretrained checkpoints.

    folder, hit = synthesised_recording(SynthesisConfig(seed=1), cache_dir="cache")
    path, hit, summary = pretrained_checkpoint(source, source_truth, config, seed=0,
                                               cache_dir="cache", data_key=synthesis_key(data))

A pretrained checkpoint is keyed by what makes its numbers: the source data, the model, window
and training configs (minus settings that change no number) and the seed. Training runs in
`<cache>/pretrain_work/<hash>` (a killed run resumes there); the final checkpoint is then copied
atomically to `<cache>/checkpoints/<hash>`, so concurrent jobs never see a partial one.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Callable

from esort_jax import checkpoint as ckpt
from esort_jax.config import to_dict
from esort_jax.io.atomic import atomic_folder
from esort_jax.recording import Recording, Sorting
from esort_jax.runtime.cache import cached

__all__ = ["synthesis_key", "synthesised_recording", "pretrain_key", "pretrained_checkpoint"]

# Training settings that change no number a run computes (not part of the cache key).
_UNKEYED_TRAIN = ("progress", "log_every_steps")


def synthesis_key(data: Any) -> dict:
    """What identifies a synthesised recording: the generator version and the full config."""
    from data_gen.synthesize import GENERATOR, GENERATOR_VERSION

    config = to_dict(data)
    for section, defaults in _ADDED_SYNTHESIS_DEFAULTS.items():  # see the constant
        if isinstance(config.get(section), dict):
            config[section] = {k: v for k, v in config[section].items() if k not in defaults or v != defaults[k]}
    return {"generator": GENERATOR, "generator_version": GENERATOR_VERSION, "config": config}


# Synthesis settings added after recordings were first cached (issue 17's harder preset), keyed
# only away from their defaults, which reproduce the earlier recordings bit for bit.
_ADDED_SYNTHESIS_DEFAULTS = {
    "units": {"background_density_per_mm3": 0.0, "background_amplitude_uv": [5.0, 25.0]},
    "templates": {"amplitude_distribution": "uniform", "amplitude_median_uv": 100.0, "amplitude_log_sd": 0.6,
                  "positive_fraction": 0.0, "triphasic_fraction": 0.0, "triphasic_ratio": [0.2, 0.5],
                  "triphasic_lead_ms": 0.3},
    "firing": {"burst_fraction": 0.0, "burst_probability": 0.3, "burst_max_spikes": 4, "burst_isi_ms": [3.0, 8.0],
               "burst_attenuation": 0.15},
}


def synthesised_recording(data: Any, cache_dir: str | Path, *, force: bool = False) -> tuple[Path, bool]:
    """(folder, cache hit): the recording folder `data_gen.write_synthetic(data)` makes, cached."""
    from data_gen import write_synthetic

    return cached(
        cache_dir, "recordings", synthesis_key(data),
        lambda target: write_synthetic(data, target, progress=True), force=force,
    )


def pretrain_key(config, *, seed: int, data_key: dict) -> dict:
    """The cache key of a network pretrained with `config` (a PipelineConfig) on the data
    `data_key` describes. `train.kernel` is keyed as resolved on this machine ('xla' or
    'native', as `train` will run it): the two compute different float roundings, so a machine
    without a compiler ('auto' → 'xla') never reuses another's native-kernel network."""
    train_key = _unless_default({k: v for k, v in to_dict(config.train).items() if k not in _UNKEYED_TRAIN})
    train_key["kernel"] = _train_kernel(config)
    from esort_jax.augment import idle_collision_settings_removed

    train_key = idle_collision_settings_removed(train_key, config.train.collision_probability)
    if config.train.max_steps is not None:  # max_steps once rounded up to whole epochs: not those networks
        train_key["max_steps_rule"] = "exact"
    return {
        "role": "pretrain",
        "checkpoint_format": ckpt.FORMAT_VERSION,  # a layout change must not reuse old checkpoints
        "data": data_key,
        "model": to_dict(config.model),
        "windows": _unless_default(to_dict(config.windows)),
        "train": train_key,
        "seed": seed,
    }


# Settings added after checkpoints were first cached, keyed only away from their defaults so that
# those entries (made with the default behaviour) stay valid.
_ADDED_DEFAULTS = {"label_mode": "complete_span", "max_steps": None, "early_stopping_patience_steps": 0,
                   "early_stopping_min_delta": 0.0}


def _unless_default(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in _ADDED_DEFAULTS or v != _ADDED_DEFAULTS[k]}


def _train_kernel(config) -> str:
    """The layer-1 kernel `train` resolves `config.train.kernel` to on this machine's devices."""
    import jax

    from esort_jax.fast import choose_kernel

    return choose_kernel(
        config.train.kernel, purpose="train", devices=jax.devices(), compute_dtype=config.model.compute_dtype,
        temporal_features=config.model.temporal_features,
    )


def pretrained_checkpoint(
    source: Recording,
    truth: Sorting,
    config,
    *,
    seed: int,
    cache_dir: str | Path,
    data_key: dict,
    force: bool = False,
    callback: Callable[[int, dict], None] | None = None,
) -> tuple[Path, bool, dict]:
    """(checkpoint path, cache hit, training summary) of the network pretrained from scratch on
    `source` labelled by `truth` (`esort_jax.pipeline.fit`), reused across runs when cached.
    The summary is empty on a cache hit."""
    from esort_jax.pipeline import fit
    from esort_jax.transfer import TransferConfig

    config = dataclasses.replace(config, transfer=TransferConfig(init="scratch"))
    summary: dict = {}

    def build(path: Path) -> None:
        work = Path(cache_dir).expanduser().resolve() / "pretrain_work" / path.name
        fitted = fit(source, truth, config, seed=seed, run_dir=work, callback=callback,
                     metadata_extra={"role": "pretrain", "data": data_key})
        summary.update(fitted.summary())
        with atomic_folder(path) as tmp:
            shutil.copytree(fitted.train_result.checkpoint, tmp, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)

    path, hit = cached(cache_dir, "checkpoints", pretrain_key(config, seed=seed, data_key=data_key), build,
                       force=force)
    return path, hit, summary
