"""Run logging: JSON lines always, Weights & Biases optionally. The only module importing wandb.

Modes:
  'offline'  (default) W&B files written under the run folder, nothing sent, no login asked;
             sync later with `wandb sync <run folder>/wandb/offline-run-*`.
  'disabled' no W&B at all (tests); JSON lines are still written.
  'online'   only when a user chooses it; a missing login or network fails fast (the init
             timeout is bounded) and the run continues with JSON lines only, saying so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

from esort_jax.config import require
from esort_jax.io.atomic import to_jsonable

__all__ = ["LoggerConfig", "RunLogger"]


@dataclasses.dataclass(frozen=True)
class LoggerConfig:
    """Where metrics go.

    Attributes:
      mode: 'offline' | 'disabled' | 'online' for W&B (JSON lines are always written).
      project, entity, group, tags, name: W&B run identity (entity None = the user's default).
      init_timeout_s: bound on W&B start-up in online mode.
    """

    mode: Literal["offline", "disabled", "online"] = "offline"
    project: str = "esort_jax"
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    tags: tuple[str, ...] = ()
    init_timeout_s: float = 30.0

    def validate(self, where: str = "logger") -> None:
        require(self.init_timeout_s > 0, f"{where}.init_timeout_s", "must be > 0")


class RunLogger:
    """Logs metrics, summaries, tables and images for one run.

    Use as a context manager so the W&B run is closed even when the task fails:

        with RunLogger(config, run_dir, run_config=resolved) as logger:
            logger.log({"train/loss": 0.3}, step=epoch)
    """

    def __init__(self, config: LoggerConfig, run_dir: str | os.PathLike, run_config: dict | None = None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a")
        self._wandb_run = None
        self._wandb = None
        if config.mode != "disabled":
            self._start_wandb(run_config or {})

    def _start_wandb(self, run_config: dict) -> None:
        try:
            import wandb
        except ImportError:  # pragma: no cover - wandb is a pinned core requirement
            print("esort_jax.runtime.log: wandb is not installed; logging to metrics.jsonl only", file=sys.stderr)
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            self._wandb_run = wandb.init(
                project=self.config.project,
                entity=self.config.entity,
                group=self.config.group,
                name=self.config.name,
                tags=list(self.config.tags),
                dir=str(self.run_dir),
                mode=self.config.mode,
                config=to_jsonable(run_config),
                settings=wandb.Settings(init_timeout=self.config.init_timeout_s, console="off"),
                reinit="finish_previous",
            )
            self._wandb = wandb
        except Exception as error:  # never let logging kill a run
            print(
                f"esort_jax.runtime.log: W&B ({self.config.mode}) could not start ({type(error).__name__}: "
                f"{error}); logging to {self.run_dir / 'metrics.jsonl'} only",
                file=sys.stderr,
            )
            self._wandb_run = None

    @property
    def wandb_run(self):
        return self._wandb_run

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Per-step/epoch scalars."""
        record = {"time": time.time(), "step": step, **to_jsonable(metrics)}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._wandb_run is not None:
            self._wandb_run.log(to_jsonable(metrics), step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        """Final metrics (flat dict)."""
        self._jsonl.write(json.dumps({"time": time.time(), "summary": to_jsonable(metrics)}) + "\n")
        self._jsonl.flush()
        if self._wandb_run is not None:
            for key, value in to_jsonable(metrics).items():
                self._wandb_run.summary[key] = value

    def table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        """A summary table (e.g. one row per arm)."""
        if self._wandb_run is not None:
            self._wandb_run.log({name: self._wandb.Table(columns=columns, data=to_jsonable(rows))})

    def image(self, name: str, path: str | os.PathLike) -> None:
        """A PNG plot already written into the run folder."""
        if self._wandb_run is not None:
            self._wandb_run.log({name: self._wandb.Image(str(path))})

    def close(self, failed: bool = False) -> None:
        if self._wandb_run is not None:
            self._wandb_run.finish(exit_code=1 if failed else 0)
            self._wandb_run = None
        if not self._jsonl.closed:
            self._jsonl.close()

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)
