"""Sweeps through hydra-submitit-launcher: the SLURM launcher configs render to sbatch scripts
with their resources; a 2-job multirun of the tiny config runs through the local executor (each
job its own process, both needing the same cached recording), summarize.py reads the sweep, and
sort.py sorts a list of recordings one job each."""

import json
import os
import shutil
from pathlib import Path

import pytest
import submitit
from hydra import compose, initialize_config_dir
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from esort_jax.runtime.cache import entry_problem
from tests._cluster import REPO, TINY, entry_point, environment, run

SLURM = sorted(p.stem for p in (REPO / "conf" / "hydra" / "launcher").glob("slurm_*.yaml"))


def _sbatch_script(launcher: dict, folder: Path) -> str:
    """The sbatch script submitit writes for `launcher` (the plugin's parameter translation)."""
    params = {k: v for k, v in launcher.items() if k not in ("_target_", "submitit_folder", "name")}
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    return executor._executor._make_submission_file_text("python experiments/transfer.py", "0")


@pytest.mark.parametrize("name", SLURM)
def test_slurm_launcher_configs_render_their_resources(name, tmp_path, monkeypatch):
    fake = tmp_path / "bin"  # SLURM is not installed here: submitit only checks that srun exists
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ.get('PATH', '')}")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("transfer", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("SlurmLauncher")
    script = _sbatch_script(launcher, tmp_path / "submitit")
    for option, value in (("partition", launcher["partition"]), ("time", launcher["timeout_min"]),
                          ("nodes", launcher["nodes"]), ("ntasks-per-node", launcher["tasks_per_node"]),
                          ("cpus-per-task", launcher["cpus_per_task"]), ("mem", f"{launcher['mem_gb']}GB")):
        assert f"#SBATCH --{option}={value}\n" in script, (option, script)
    if launcher["gpus_per_node"]:
        assert f"#SBATCH --gpus-per-node={launcher['gpus_per_node']}\n" in script


# ~30 s (two Hydra jobs through submitit's local executor); `make test-slow` runs it, and the
# slurm script the same launcher writes is checked in the default suite above
@pytest.mark.slow
def test_two_job_multirun_through_submitit_local(tmp_path):
    cache, sweep = tmp_path / "cache", tmp_path / "sweep"
    env = environment(cache)
    run(entry_point("transfer.py", "--multirun", "hydra/launcher=local", *TINY, "arms=[scratch]", "k=2,3",
                    f"hydra.sweep.dir={sweep}"), tmp_path / "transfer.log", env=env, cwd=tmp_path, timeout=400)
    results = [json.loads((sweep / str(job) / "results.json").read_text()) for job in (0, 1)]
    assert [r["status"] for r in results] == ["ok", "ok"] and [r["k"] for r in results] == [2, 3]
    assert len({r["devices"]["process_count"] for r in results}) == 1
    # Both jobs needed the same target: one built it, the other waited and found it.
    assert sorted(r["target"]["cache_hit"] for r in results) == [False, True]
    folders = [p for p in (cache / "recordings").iterdir() if not p.name.endswith(".lock")]
    assert folders == [Path(results[0]["target"]["path"])]  # one entry, no temporaries
    assert entry_problem(folders[0], json.loads((folders[0] / "cache_key.json").read_text())["key"]) is None
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # two submitit jobs
    summary = run(entry_point("summarize.py", str(sweep), "--rows", "k", "--metric", "scratch.accuracy_pooled"),
                  tmp_path / "summary.log", env=env, cwd=tmp_path, timeout=120)
    assert "2 results (0 not ok)" in summary and (sweep / "summary.csv").is_file()
    # Sorting many recordings: one job per recording, through the same launcher.
    recordings = [shutil.copytree(folders[0], tmp_path / name) for name in ("rec_a", "rec_b")]
    sorted_sweep = tmp_path / "sorted"
    run(entry_point("sort.py", "--multirun", "hydra/launcher=local", "logger=disabled",
                    f"checkpoint={results[0]['scratch']['checkpoint']}", "threshold=1.5",
                    "recording.path=" + ",".join(map(str, recordings)), f"hydra.sweep.dir={sorted_sweep}"),
        tmp_path / "sort.log", env=env, cwd=tmp_path, timeout=400)
    sorted_results = [json.loads((sorted_sweep / str(job) / "results.json").read_text()) for job in (0, 1)]
    assert [r["recording"]["path"] for r in sorted_results] == [str(r) for r in recordings]
    assert all((sorted_sweep / str(job) / "sorting" / "sorting.npz").is_file() for job in (0, 1))
