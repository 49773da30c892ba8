"""Recordings for the experiments from their config: load a file, or synthesise through the
content-addressed cache (esort_jax.runtime.artifacts).

A recording spec in the configs is

    target:
      path: null        # a recording folder, a MEArec .h5 file or a SpikeInterface-saved folder
      data: {...}       # the synthesis config (conf/data/*) used when path is null

plus, optionally (sort.yaml spells them out), the rest of esort_jax.io.RecordingSource: format,
stream_id, probe, binary (a raw binary file's rate, channels, dtype, probe) and allow_pickle
(trust a SpikeInterface folder's pickles).

Synthesised recordings are cached under `<cache_dir>/recordings/<hash of the data config>`,
shared by every run and sweep job that asks for the same config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from data_gen import SynthesisConfig
from esort_jax.config import ConfigError, from_dict
from esort_jax.io import RecordingSource, read_recording_folder
from esort_jax.recording import Recording, Sorting
from esort_jax.runtime.artifacts import synthesised_recording
from experiments._common import to_container, typed

__all__ = ["check_synthesis", "obtain_recording", "recording_source", "source_synthesis", "synthesis_of",
           "target_with_truth"]


def obtain_recording(
    run, key: str, *, data: SynthesisConfig | None = None
) -> tuple[Recording, Sorting | None, dict]:
    """(recording, labels or None, info) for the spec at cfg[key] (`path` or `data`).

    `data` overrides the spec's synthesis config (e.g. a source made on the target's probe).
    """
    spec = run.cfg.get(key)
    if spec is None:
        raise ConfigError(f"{key}: missing (needs {key}.path or {key}.data)")
    if spec.get("path"):
        source = recording_source(run, key)
        with run.stage(f"load {key}"):
            recording, labels = source.load()
        return recording, labels, {"source": "file", "path": str(Path(str(source.path)).expanduser().resolve())}
    if data is None:
        if spec.get("data") is None:
            raise ConfigError(f"{key}: set {key}.path (a recording) or {key}.data (a synthesis config)")
        data = run.typed(SynthesisConfig, f"{key}.data")
    with run.stage(f"synthesize {key}"):
        folder, hit = synthesised_recording(data, run.cfg.cache_dir, force=bool(run.cfg.get("force_rebuild", False)))
    recording, labels = read_recording_folder(folder)
    return recording, labels, {"source": "synthesized", "path": str(folder), "cache_hit": hit}


def recording_source(run, key: str) -> RecordingSource:
    """The file part of the spec at cfg[key] as a RecordingSource (path, and the optional keys
    format, stream_id, probe, binary, allow_pickle that sort.yaml spells out), validated; the
    spec's other keys (data, match_target_geometry) belong to the experiment."""
    known = {field.name for field in dataclasses.fields(RecordingSource)}
    spec = to_container(run.cfg.get(key)) or {}
    return from_dict(RecordingSource, {k: v for k, v in spec.items() if k in known}, key)


def synthesis_of(cfg, key: str) -> SynthesisConfig | None:
    """cfg[key].data typed (errors name the key) when the spec synthesises (no `path`), else None."""
    return typed(SynthesisConfig, cfg, f"{key}.data") if cfg[key].get("path") is None else None


def check_synthesis(run, *keys: str) -> None:
    """The synthesis config of each spec in `keys` that synthesises is valid (before any work)."""
    for key in keys:
        synthesis_of(run.cfg, key)


def target_with_truth(run, purpose: str, *, data: SynthesisConfig | None = None) -> tuple[Recording, Sorting, dict]:
    """(recording, ground truth, results.json entry) of cfg.target; ConfigError when the target
    has no ground truth `purpose` needs ('train and score with', ...). `data`: obtain_recording's."""
    target, truth, info = obtain_recording(run, "target", data=data)
    if truth is None:
        raise ConfigError(f"target.path: {info.get('path')} has no ground truth to {purpose}")
    return target, truth, {**info, "num_units": truth.num_units, "num_channels": target.num_channels,
                           "duration_s": target.duration_s}


def source_synthesis(run, target: Recording, target_info: dict, cfg=None) -> SynthesisConfig | None:
    """The pretraining source's synthesis config from cfg.source.data (`cfg`: default the run's;
    label_efficiency passes one per seed), on the target's own probe geometry (and sampling rate)
    when the target is a file and source.match_target_geometry; None when the source is a file
    (cfg.source.path)."""
    cfg = run.cfg if cfg is None else cfg
    if cfg.source.get("path") is not None:
        return None
    data = typed(SynthesisConfig, cfg, "source.data")
    if target_info["source"] == "file" and cfg.source.get("match_target_geometry", False):
        data = data.on_geometry(target.channel_positions, target.sampling_frequency)
        print(f"[{run.experiment}] source synthesised on the target's geometry ({target.num_channels} sites)")
    return data
