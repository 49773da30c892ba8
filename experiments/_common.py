"""Shared plumbing for the Hydra entry points (the only code besides experiments/* that knows
Hydra): typed config conversion, per-stage timing, the run logger, and results.json.

Every entry point follows the same shape:

    @hydra.main(version_base=None, config_path="../conf", config_name="synthesize")
    def main(cfg):
        with Run(cfg, "synthesize") as run:
            data = run.typed(SynthesisConfig, "data")     # validate everything first
            with run.stage("synthesize"):
                ...
            run.results["summary"] = {...}
        return run.results

`results.json` (written atomically into the run folder, also when the run fails) holds the
experiment's own keys plus: experiment, status, error, seed, seconds (per stage), devices,
provenance (git commit, package versions, time) and the resolved config.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Iterator, TypeVar

from omegaconf import DictConfig, OmegaConf

from esort_jax.config import ConfigError, from_dict
from esort_jax.io.atomic import write_json
from esort_jax.runtime.log import LoggerConfig, RunLogger
from esort_jax.runtime.provenance import provenance
from esort_jax.runtime.host_memory import configure_host_allocator

__all__ = ["Run", "run_dir", "device_info", "to_container"]

# `${add:${seed},1000}`: derived seeds in configs (e.g. the pretraining source's).
if not OmegaConf.has_resolver("add"):
    OmegaConf.register_new_resolver("add", lambda *values: sum(values))

# Keep XLA's per-step scratch memory mapped instead of page-faulting it afresh every step
# (30-40 % of a training step on CPU; see esort_jax.runtime.host_memory). Must run
# before JAX's first computation, so it happens at import of this module.
configure_host_allocator()

# JAX logs at INFO that it probed for TPU/GPU plugins; Hydra's logging set-up would print it.
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step at INFO

T = TypeVar("T")


def to_container(cfg: DictConfig | dict | None) -> Any:
    if isinstance(cfg, (DictConfig,)) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def run_dir() -> Path:
    """The Hydra run folder (honours hydra.run.dir / sweep dirs); cwd outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):
        return Path.cwd()


def device_info() -> dict:
    """Which JAX devices this run used."""
    import jax

    devices = jax.local_devices()
    return {
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
    }


class Run:
    """One experiment run: typed config access, stage timing, logger and results.json."""

    def __init__(self, cfg: DictConfig, experiment: str, output_dir: str | os.PathLike | None = None):
        self.cfg = cfg
        self.experiment = experiment
        self.dir = Path(output_dir) if output_dir is not None else run_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.resolved = to_container(cfg)
        self.results: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}
        self.logger: RunLogger | None = None
        self._started = time.perf_counter()

    def typed(self, cls: type[T], key: str) -> T:
        """cfg[key] converted to dataclass `cls`; ConfigError names the dotted key."""
        node = OmegaConf.select(self.cfg, key) if "." in key else self.cfg.get(key)
        return from_dict(cls, to_container(node), key)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a named stage; seconds accumulate into results.json['seconds'][name]."""
        print(f"[{self.experiment}] {name} ...", flush=True)
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
            print(f"[{self.experiment}] {name} done in {elapsed:.1f} s", flush=True)

    def __enter__(self) -> "Run":
        logger_cfg = from_dict(LoggerConfig, to_container(self.cfg.get("logger")), "logger")
        self.logger = RunLogger(logger_cfg, self.dir, run_config=self.resolved)
        return self

    def write_results(self, status: str = "ok", error: str | None = None) -> Path:
        import jax  # noqa: F401  (device info)

        self.seconds["total"] = time.perf_counter() - self._started
        payload = {
            "experiment": self.experiment,
            "status": status,
            **({"error": error} if error else {}),
            **self.results,
            "seed": self.resolved.get("seed") if isinstance(self.resolved, dict) else None,
            "seconds": self.seconds,
            "devices": device_info(),
            "provenance": provenance(),
            "config": self.resolved,
        }
        path = self.dir / "results.json"
        write_json(path, payload)
        return path

    def __exit__(self, exc_type, exc, tb) -> None:
        failed = exc_type is not None
        error = None
        if failed:
            error = f"{exc_type.__name__}: {exc}"
            if not isinstance(exc, ConfigError):
                traceback.print_exception(exc_type, exc, tb, file=sys.stderr)
        path = self.write_results("failed" if failed else "ok", error)
        if self.logger is not None:
            if not failed:
                flat = {k: v for k, v in self.results.items() if isinstance(v, (int, float))}
                self.logger.summary({**flat, **{f"seconds/{k}": v for k, v in self.seconds.items()}})
            self.logger.close(failed=failed)
        print(f"[{self.experiment}] results: {path}", flush=True)
