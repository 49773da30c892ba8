"""Entry points and workers run as bounded subprocesses (tests/test_search.py, test_cluster.py,
test_distributed.py): each in its own process group, killed in `finally`, with a time limit;
output to a log file the assertion messages quote."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Sequence

import pytest

REPO = Path(__file__).resolve().parent.parent

# Experiment overrides of the tiny transfer run (16 sites, 2 s, small network, 2 epochs, K = 3).
TINY = ["experiment=demo", "logger=disabled"]


def environment(cache: Path | None = None, **extra: str) -> dict:
    """The test process's environment for a child: this repository importable, W&B off, CPU,
    the artefact cache at `cache`."""
    env = {**os.environ, "WANDB_MODE": "disabled", "JAX_PLATFORMS": "cpu",
           # tiny shapes: compilation dominates, so compile without most optimisations (as _tiny.fast_compile)
           "JAX_DISABLE_MOST_OPTIMIZATIONS": "true",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if cache is not None:
        env["ESORT_CACHE_DIR"] = str(cache)
    env.update(extra)
    return env


def entry_point(script: str, *overrides: str) -> list[str]:
    """The command running experiments/<script> with Hydra overrides."""
    return [sys.executable, str(REPO / "experiments" / script), *overrides]


@contextlib.contextmanager
def started(command: Sequence[str], log: Path, *, env: dict, cwd: Path) -> Iterator[subprocess.Popen]:
    """`command` running in a new process group with stdout and stderr in `log`; the group is
    killed on leaving the block if still alive."""
    with open(log, "w") as handle:
        process = subprocess.Popen(list(command), stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   start_new_session=True)
        try:
            yield process
        finally:
            kill_group(process)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process group `process` leads (it was started with start_new_session)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def run(command: Sequence[str], log: Path, *, env: dict, cwd: Path, timeout: float) -> str:
    """Run `command` to the end (at most `timeout` s, then killed); its output; fails the test
    quoting the output's tail when it exits non-zero."""
    with started(command, log, env=env, cwd=cwd) as process:
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(command[1:3])} still running after {timeout} s:\n{tail(log)}")
    if code != 0:
        pytest.fail(f"{' '.join(command[1:3])} exited with {code}:\n{tail(log)}")
    return log.read_text()


def tail(log: Path, chars: int = 4000) -> str:
    return log.read_text()[-chars:] if log.exists() else "(no output)"


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One artefact cache for the session's entry-point runs: the tiny recordings and the tiny
    pretrained network are built once."""
    return tmp_path_factory.mktemp("shared_cache")
