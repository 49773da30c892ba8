"""Recordings for the experiments: load a file, or synthesise through the content-addressed cache.

A recording spec in the configs is

    target:
      path: null        # a recording folder, a MEArec .h5 file or a SpikeInterface-saved folder
      data: {...}       # the synthesis config (conf/data/*) used when path is null

Synthesised recordings are cached under `<cache_dir>/recordings/<hash of the data config>`,
shared by every run and sweep job that asks for the same config.
"""

from __future__ import annotations

from pathlib import Path

from data_gen import SynthesisConfig, write_synthetic
from data_gen.synthesize import GENERATOR, GENERATOR_VERSION
from esort_jax.runtime.cache import cached
from esort_jax.config import ConfigError, to_dict
from esort_jax.io import load_recording, read_recording_folder
from esort_jax.recording import Recording, Sorting

__all__ = ["obtain_recording", "synthesis_key"]


def synthesis_key(data: SynthesisConfig) -> dict:
    """What identifies a synthesised recording: the generator version and the full config."""
    return {"generator": GENERATOR, "generator_version": GENERATOR_VERSION, "config": to_dict(data)}


def obtain_recording(
    run, key: str, *, data: SynthesisConfig | None = None
) -> tuple[Recording, Sorting | None, dict]:
    """(recording, labels or None, info) for the spec at cfg[key] (`path` or `data`).

    `data` overrides the spec's synthesis config (e.g. a source made on the target's probe).
    """
    spec = run.cfg.get(key)
    if spec is None:
        raise ConfigError(f"{key}: missing (needs {key}.path or {key}.data)")
    path = spec.get("path")
    if path:
        path = Path(str(path)).expanduser()
        with run.stage(f"load {key}"):
            # optional keys (sort.py has them): a forced reader, a stream, a probe file
            recording, labels = load_recording(
                path, str(spec.get("format") or "auto"), stream_id=spec.get("stream_id"), probe=spec.get("probe")
            )
        return recording, labels, {"source": "file", "path": str(path.resolve())}
    if data is None:
        if spec.get("data") is None:
            raise ConfigError(f"{key}: set {key}.path (a recording) or {key}.data (a synthesis config)")
        data = run.typed(SynthesisConfig, f"{key}.data")
    with run.stage(f"synthesize {key}"):
        folder, hit = cached(
            run.cfg.cache_dir,
            "recordings",
            synthesis_key(data),
            lambda target: write_synthetic(data, target, progress=True),
            force=bool(run.cfg.get("force_rebuild", False)),
        )
    recording, labels = read_recording_folder(folder)
    return recording, labels, {"source": "synthesized", "path": str(folder), "cache_hit": hit}
