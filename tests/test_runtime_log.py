"""esort_jax.runtime.log: metrics.jsonl is always written; W&B (the only module importing it) is
driven as documented -- offline runs land in the run folder without network, 'disabled' never
touches W&B, a W&B that cannot start leaves the run logging to JSON lines, and a failed task
closes its W&B run with exit code 1."""

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from esort_jax.config import ConfigError, from_dict
from esort_jax.runtime.log import LoggerConfig, RunLogger

REPO = Path(__file__).resolve().parents[1]


class _FakeRun:
    def __init__(self):
        self.logged, self.summary, self.finished = [], {}, []

    def log(self, metrics, step=None):
        self.logged.append((metrics, step))

    def finish(self, exit_code=0):
        self.finished.append(exit_code)


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in `wandb` module recording what RunLogger asks of it."""
    module = types.ModuleType("wandb")
    module.inits, module.runs = [], []

    def init(**kwargs):
        module.inits.append(kwargs)
        if module.fail:
            raise RuntimeError("no network")
        module.runs.append(_FakeRun())
        return module.runs[-1]

    module.fail = False
    module.init = init
    module.Settings = lambda **kwargs: ("settings", kwargs)
    module.Table = lambda columns, data: ("table", columns, data)
    module.Image = lambda path: ("image", path)
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_disabled_never_touches_wandb_and_still_writes_json_lines(tmp_path, fake_wandb):
    with RunLogger(LoggerConfig(mode="disabled"), tmp_path / "run", run_config={"a": 1}) as logger:
        assert logger.wandb_run is None
        logger.log({"train/loss": np.float32(0.25), "epoch": np.int64(3), "curve": np.array([1.0, 2.0])}, step=7)
        logger.summary({"accuracy": np.float64(0.5)})
        logger.table("arms", ["arm"], [["transfer"]])
        logger.image("plot", tmp_path / "nothing.png")  # no W&B: nothing to upload, no error
    assert fake_wandb.inits == []
    records = _records(tmp_path / "run")
    assert [sorted(r) for r in records] == [["curve", "epoch", "step", "time", "train/loss"], ["summary", "time"]]
    assert records[0]["step"] == 7 and records[0]["train/loss"] == 0.25 and records[0]["epoch"] == 3
    assert records[0]["curve"] == [1.0, 2.0] and records[1]["summary"] == {"accuracy": 0.5}
    with RunLogger(LoggerConfig(mode="disabled"), tmp_path / "run") as again:  # appends
        again.log({"x": 1})
    assert len(_records(tmp_path / "run")) == 3


def test_wandb_gets_the_configured_run_and_every_record(tmp_path, fake_wandb):
    config = LoggerConfig(mode="offline", project="p", entity="e", group="g", name="n", tags=("a", "b"),
                          init_timeout_s=5.0)
    with RunLogger(config, tmp_path / "run", run_config={"seed": np.int64(3), "path": tmp_path}) as logger:
        logger.log({"loss": np.float32(0.5)}, step=2)
        logger.summary({"accuracy": 0.75, "n": np.int64(4)})
        logger.table("arms", ["arm", "acc"], [["transfer", np.float64(0.9)]])
        logger.image("plot", tmp_path / "plot.png")
        run = logger.wandb_run
    (init,) = fake_wandb.inits
    assert init == {"project": "p", "entity": "e", "group": "g", "name": "n", "tags": ["a", "b"],
                    "dir": str(tmp_path / "run"), "mode": "offline", "config": {"seed": 3, "path": str(tmp_path)},
                    "settings": ("settings", {"init_timeout": 5.0, "console": "off"}), "reinit": "finish_previous"}
    assert run.logged == [({"loss": 0.5}, 2), ({"arms": ("table", ["arm", "acc"], [["transfer", 0.9]])}, None),
                          ({"plot": ("image", str(tmp_path / "plot.png"))}, None)]
    assert run.summary == {"accuracy": 0.75, "n": 4} and run.finished == [0]
    assert logger.wandb_run is None and len(_records(tmp_path / "run")) == 2


def test_a_failed_task_closes_the_wandb_run_with_exit_code_one(tmp_path, fake_wandb):
    with pytest.raises(ValueError, match="boom"):
        with RunLogger(LoggerConfig(mode="offline"), tmp_path / "a"):
            raise ValueError("boom")
    logger = RunLogger(LoggerConfig(mode="online"), tmp_path / "b")
    logger.close(failed=True)
    logger.close()  # closing twice is harmless
    assert [run.finished for run in fake_wandb.runs] == [[1], [1]]


def test_a_wandb_that_cannot_start_leaves_json_lines_only(tmp_path, fake_wandb, capsys):
    fake_wandb.fail = True
    with RunLogger(LoggerConfig(mode="online"), tmp_path / "run") as logger:
        assert logger.wandb_run is None
        logger.log({"loss": 1.0}, step=0)
        logger.table("t", ["a"], [[1]])
    assert len(fake_wandb.inits) == 1 and _records(tmp_path / "run")[0]["loss"] == 1.0
    assert ("W&B (online) could not start (RuntimeError: no network); logging to "
            f"{tmp_path / 'run' / 'metrics.jsonl'} only") in capsys.readouterr().err


def test_logger_config_errors_name_the_key():
    assert from_dict(LoggerConfig, {"tags": ["x"]}, "logger") == LoggerConfig(tags=("x",))
    with pytest.raises(ConfigError, match=r"^logger\.init_timeout_s: must be > 0"):
        from_dict(LoggerConfig, {"init_timeout_s": 0}, "logger")
    with pytest.raises(ConfigError, match=r"^logger\.mode: 'cloud' is not one of \['offline', 'disabled', 'online'\]"):
        from_dict(LoggerConfig, {"mode": "cloud"}, "logger")


_OFFLINE_RUN = textwrap.dedent("""
    import sys
    from esort_jax.runtime.log import LoggerConfig, RunLogger

    logger = RunLogger(LoggerConfig(mode="offline"), sys.argv[1], run_config={"seed": 1})
    assert logger.wandb_run is not None, "W&B did not start"
    logger.log({"loss": 0.5}, step=0)
    logger.summary({"accuracy": 0.9})
    logger.table("arms", ["arm"], [["transfer"]])
    logger.close(failed=True)
""")


def test_offline_wandb_writes_under_the_run_folder_without_network(tmp_path):
    """The real W&B, in a child process (its service must not outlive the test): HOME and
    WANDB_DIR point into tmp_path, the server address at a closed port, and the run is bounded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(PYTHONPATH=str(REPO), HOME=str(tmp_path / "home"), WANDB_DIR=str(tmp_path / "wandb_dir"),
               WANDB_MODE="offline", WANDB_SILENT="true", WANDB_BASE_URL="http://127.0.0.1:9")
    (tmp_path / "wandb_dir").mkdir()
    done = subprocess.run([sys.executable, "-c", _OFFLINE_RUN, str(tmp_path / "run")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    assert len(list(run.glob("run-*.wandb"))) == 1 and (run / "files").is_dir()
    assert list((tmp_path / "wandb_dir").iterdir()) == []  # the run folder, not WANDB_DIR
    assert [sorted(r) for r in _records(tmp_path / "run")] == [["loss", "step", "time"], ["summary", "time"]]
