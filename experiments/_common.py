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
import dataclasses
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Iterator, TypeVar

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from esort_jax.config import ConfigError, from_dict
from esort_jax.pipeline import PipelineConfig
from esort_jax.io.atomic import write_json
from esort_jax.runtime.log import LoggerConfig, RunLogger
from esort_jax.runtime.host_memory import configure_host_allocator
from esort_jax.runtime.provenance import provenance

__all__ = ["Run", "RunFolderError", "RunFolderGuard", "check_run_folder", "prepare_process", "register_resolvers", "run_dir", "device_info", "to_container", "typed",
           "pipeline_config", "objective", "join_processes"]


def register_resolvers() -> None:
    """The OmegaConf resolvers the configs use: `${add:${seed},1000}` (derived seeds, e.g. the
    pretraining source's)."""
    if not OmegaConf.has_resolver("add"):
        OmegaConf.register_new_resolver("add", _add)


def _add(*values: Any) -> Any:
    """`${add:a,b,...}`: the sum of numbers (a clear error for anything else)."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"${{add:...}} adds numbers; got {list(values)}")
    return sum(values)


def prepare_process() -> None:
    """Process-wide set-up every entry point calls first, before Hydra composes its config and
    before JAX computes anything: the config resolvers; glibc malloc keeping XLA's per-step
    scratch memory mapped instead of page-faulting it afresh every step (a large share of a training
    step on CPU; see configure_host_allocator); JAX's and absl's INFO chatter off (Hydra's
    logging set-up would print JAX's plugin probing and orbax's every save step)."""
    register_resolvers()
    configure_host_allocator()
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)


T = TypeVar("T")


def to_container(cfg: DictConfig | dict | None) -> Any:
    if isinstance(cfg, (DictConfig,)) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _resolved(cfg: DictConfig) -> Any:
    """to_container(cfg), an interpolation that does not resolve (`${add:...}` given a string, a
    key that does not exist) a ConfigError naming the key: `data.seed: ${add:...} adds numbers;
    got [0, 'abc']` (OmegaConf's own message, less its class names and traceback)."""
    from omegaconf.errors import InterpolationResolutionError

    try:
        return to_container(cfg)
    except InterpolationResolutionError as error:
        message = str(error.msg).splitlines()[0].removeprefix("ConfigError raised while resolving interpolation: ")
        raise ConfigError(f"{error.full_key}: {message}") from None


def run_dir() -> Path:
    """The Hydra run folder (honours hydra.run.dir / sweep dirs); cwd outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):
        return Path.cwd()


def device_info() -> dict:
    """Which JAX devices this run used (this process's; `global_device_count` over all processes)."""
    import jax

    devices = jax.local_devices()
    return {
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "process_index": jax.process_index(),
        "global_device_count": jax.device_count(),
    }


def join_processes(cfg: DictConfig) -> dict:
    """Join a multi-process run as `cfg.distributed` says (esort_jax.runtime.distributed; before
    JAX computes anything); this process's index and the counts. One process without the key."""
    from esort_jax.runtime.distributed import DistributedConfig, initialize

    node = to_container(cfg.get("distributed")) if "distributed" in cfg else None
    return initialize(from_dict(DistributedConfig, node or {}, "distributed"))


def typed(cls: type[T], cfg: DictConfig, key: str) -> T:
    """cfg[key] (a dotted key) converted to dataclass `cls`; ConfigError names the key."""
    return from_dict(cls, to_container(OmegaConf.select(cfg, key)), key)


def pipeline_config(
    cfg: DictConfig,
    *,
    windows: str = "windows",
    train: str = "train",
    transfer: str = "transfer",
    init: str = "scratch",
    checkpoint: str | None = None,
    **changes,
) -> PipelineConfig:
    """The PipelineConfig of `cfg`: model, evaluation, infer, postprocess from their top-level
    groups; windows, train and transfer from the given keys (e.g. 'finetune.windows'), the
    transfer's `init` and `checkpoint` as given (experiments set them per arm); `changes`
    replace whole stages (e.g. windows=...). Every stage is validated; errors name the key."""
    from esort_jax.evaluate import EvaluationConfig
    from esort_jax.infer import InferenceConfig
    from esort_jax.model import ModelConfig
    from esort_jax.postprocess import PostprocessConfig
    from esort_jax.train import TrainConfig
    from esort_jax.transfer import TransferConfig
    from esort_jax.windows import WindowConfig

    node = to_container(OmegaConf.select(cfg, transfer)) or {}
    stages = dict(
        model=typed(ModelConfig, cfg, "model"),
        windows=typed(WindowConfig, cfg, windows),
        train=typed(TrainConfig, cfg, train),
        transfer=from_dict(TransferConfig, {**node, "init": init, "checkpoint": checkpoint}, transfer),
        evaluation=typed(EvaluationConfig, cfg, "evaluation") if "evaluation" in cfg else EvaluationConfig(),
        infer=typed(InferenceConfig, cfg, "infer") if "infer" in cfg else InferenceConfig(),
        postprocess=typed(PostprocessConfig, cfg, "postprocess") if "postprocess" in cfg else PostprocessConfig(),
    )
    stages.update(changes)
    return PipelineConfig(**stages)


def objective(cfg: DictConfig, results: dict) -> Any:
    """What an entry point returns to Hydra: `results`, or under a search (`optimized_metric`, a
    dotted key such as `transfer.validation.accuracy_pooled`) that number, which the Optuna
    sweeper optimises. A missing or non-numeric value is an error naming the key."""
    key = cfg.get("optimized_metric")
    if not key:
        return results
    value: Any = results
    for part in str(key).split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"optimized_metric: {key!r} is not a number in this run's results (got {value!r})")
    return float(value)


RESULTS = "results.json"


class RunFolderError(ConfigError):
    """The run folder holds another run's results; nothing was written."""


def check_run_folder(folder: Path, experiment: str, overwrite: bool = False) -> None:
    """RunFolderError when `folder`'s results.json belongs to another experiment, or to a finished
    run of this one and not `overwrite`; a failed or killed run of this one may continue."""
    path = folder / RESULTS
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text())
        other, status = previous.get("experiment"), previous.get("status")
    except (ValueError, AttributeError) as error:
        raise RunFolderError(f"{path} exists but is not a readable results file ({error}); choose another "
                             "run folder (hydra.run.dir=...) or remove it") from None
    if other != experiment:
        raise RunFolderError(f"{folder} holds the results of a {other!r} run ({RESULTS}); {experiment} "
                             "will not overwrite them: choose another run folder (hydra.run.dir=...)")
    if status == "ok" and not overwrite:
        raise RunFolderError(f"{folder} holds a finished {experiment} run ({RESULTS}, status ok); choose "
                             "another run folder (hydra.run.dir=...) or pass overwrite=true to replace it")


class RunFolderGuard(Callback):
    """Hydra callback (conf/common.yaml, hydra.callbacks): check_run_folder on hydra.run.dir
    before Hydra writes into it. Hydra saves .hydra/config.yaml, hydra.yaml, overrides.yaml and
    opens <job>.log in the run folder before the entry point starts, so a check made only in Run
    would leave a refused run replacing another run's record of its config. The experiment is
    Hydra's job name (the entry point's file name, which each passes to Run). Hydra turns an
    exception raised by a callback into a warning and goes on, so a refusal exits the process
    (status 1, the message on stderr) instead."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # for ${hydra:...} in hydra.run.dir, as run_job does next
        folder = OmegaConf.select(config, "hydra.run.dir", throw_on_resolution_failure=False)
        name = OmegaConf.select(config, "hydra.job.name", throw_on_resolution_failure=False)
        overwrite = OmegaConf.select(config, "overwrite", default=False, throw_on_resolution_failure=False)
        if not (folder and name):
            return
        try:
            check_run_folder(Path(str(folder)), str(name), bool(overwrite))
        except RunFolderError as error:
            raise SystemExit(f"{type(error).__name__}: {error}") from None


class Run:
    """One experiment run: typed config access, stage timing, logger and results.json.

    Entering checks the run folder first (a folder holding another experiment's results, or a
    finished run of this one without `overwrite=true`, is refused before anything is written),
    then resolves the config and starts the logger; from then on every outcome, including a
    config error while setting up, ends in results.json with `status` 'ok' or 'failed'.
    """

    def __init__(self, cfg: DictConfig, experiment: str, output_dir: str | os.PathLike | None = None):
        self.cfg = cfg
        self.experiment = experiment
        self.dir = Path(output_dir) if output_dir is not None else run_dir()
        self.resolved: Any = None
        self.results: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}
        self.logger: RunLogger | None = None
        self.process: dict[str, Any] = {"process_index": 0, "process_count": 1}  # set by __enter__
        self._started = time.perf_counter()

    def __enter__(self) -> "Run":
        # Again here: a launcher's worker process (submitit) runs the task without the script's
        # `__main__` block, so without its resolvers and allocator set-up (all idempotent).
        prepare_process()
        self.process = join_processes(self.cfg)
        self._check_folder()
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            seed = OmegaConf.select(self.cfg, "seed", default=0, throw_on_resolution_failure=False)
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise ConfigError(f"seed: must be an integer >= 0; got {seed!r}")
            self.resolved = _resolved(self.cfg)
            logger_cfg = from_dict(LoggerConfig, to_container(self.cfg.get("logger")), "logger")
            if self.process["process_index"]:  # another process of a multi-process run: its own log only
                logger_cfg = dataclasses.replace(logger_cfg, mode="disabled")
            self.logger = RunLogger(logger_cfg, self._log_dir(), run_config=self.resolved)
        except BaseException as error:
            self.__exit__(type(error), error, error.__traceback__)
            raise
        return self

    def _check_folder(self) -> None:
        """check_run_folder on this run's folder (RunFolderGuard ran it already under Hydra's
        single-run mode, before Hydra wrote into the folder; here for the Python API and sweeps)."""
        check_run_folder(self.dir, self.experiment, bool(OmegaConf.select(self.cfg, "overwrite", default=False)))

    def _log_dir(self) -> Path:
        """The run folder; process i > 0 of a multi-process run logs into process_<i>/ in it."""
        index = self.process["process_index"]
        return self.dir / f"process_{index}" if index else self.dir

    def typed(self, cls: type[T], key: str) -> T:
        """cfg[key] converted to dataclass `cls`; ConfigError names the dotted key."""
        return typed(cls, self.cfg, key)

    def pipeline_config(self, **keys) -> PipelineConfig:
        """`pipeline_config(self.cfg, **keys)`."""
        return pipeline_config(self.cfg, **keys)

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

    def write_results(self, status: str = "ok", error: str | None = None) -> Path:

        self.seconds["total"] = time.perf_counter() - self._started
        config = self.resolved if self.resolved is not None else OmegaConf.to_container(self.cfg, resolve=False)
        payload = {
            "experiment": self.experiment,
            "status": status,
            **({"error": error} if error else {}),
            **self.results,
            "seed": config.get("seed") if isinstance(config, dict) else None,
            "seconds": self.seconds,
            "devices": device_info(),
            "provenance": provenance(),
            "config": config,
        }
        path = self.dir / RESULTS
        if not self.process["process_index"]:  # of a multi-process run, process 0 writes
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
