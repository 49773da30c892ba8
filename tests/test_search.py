"""The Optuna search (hydra/sweeper=optuna_resumable, conf/hparams_search/): the configs compose;
a killed search resumes without losing or repeating a trial; the held-out labels cannot change
which trial is chosen. The two searches run transfer.py on the tiny config in subprocesses."""

import json
import os
import sqlite3
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")
import optuna  # noqa: E402
import pytest
from hydra import compose, initialize_config_dir
from hydra_plugins.esort_sweeper import _impl
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from omegaconf import OmegaConf

from tests._cluster import REPO, TINY, entry_point, environment, run, shared_cache, started, tail  # noqa: F401

SEARCHES = sorted(p.stem for p in (REPO / "conf" / "hparams_search").glob("*.yaml"))

# The real fine-tuning search with one batch size (one compilation) and few epochs.
TINY_SEARCH = """# @package _global_
defaults:
  - finetune_optuna
  - _self_
hydra:
  sweeper:
    params:
      finetune.train.batch_size: 256
      finetune.train.epochs: choice(2, 3, 4)
"""


@pytest.mark.parametrize("name", SEARCHES)
def test_search_configs_compose_with_their_space_in_the_config(name):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("transfer", overrides=[f"hparams_search={name}", "k=5"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("ResumableOptunaSweeper") and sweeper.direction == "maximize"
    assert cfg.optimized_metric == "transfer.validation.accuracy_pooled"
    assert str(sweeper.storage).startswith("sqlite:///") and sweeper.study_name.endswith("_k5_seed0")
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert space and fixed["arms"] == "[transfer]"
    for key in [*space, *fixed]:
        assert OmegaConf.select(cfg, key, default="absent") != "absent", key


def test_sampled_values_are_written_as_hydra_values():
    assert [_impl.hydra_value(v) for v in (None, True, 0.001, "temporal", 8)] == ["null", "true", "0.001",
                                                                                  "temporal", "8"]
    with pytest.raises(ValueError, match="optimized_metric"):
        _impl.objective_values({"transfer": {}}, 1)


def test_a_resumed_sampler_draws_new_values():
    def first_draws(offset):
        sampler = optuna.samplers.TPESampler(seed=3, n_startup_trials=10)
        if offset is not None:
            _impl.reseed(sampler, 3, offset)
        study = optuna.create_study(sampler=sampler)
        return [study.ask().suggest_float("x", 0, 1) for _ in range(2)]

    assert first_draws(None) != first_draws(2)  # a restart must not replay the first trials' values
    assert first_draws(2) == first_draws(2)     # and stays reproducible


def _search_command(tmp_path: Path, sweep_dir: Path, *extra: str) -> list[str]:
    conf = tmp_path / "search_conf" / "hparams_search"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "tiny_search.yaml").write_text(TINY_SEARCH)
    return entry_point("transfer.py", "--multirun", f"hydra.searchpath=[file://{conf.parent}]",
                       "hparams_search=tiny_search", *TINY, f"hydra.sweep.dir={sweep_dir}", *extra)


def _states(database: Path) -> dict[int, str]:
    """{trial number: state} read straight from the SQLite file ({} until it exists)."""
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as connection:
            return dict(connection.execute("SELECT number, state FROM trials").fetchall())
    except sqlite3.Error:
        return {}


def _study(sweep_dir: Path) -> optuna.study.Study:
    record = json.loads((sweep_dir / "search.json").read_text())
    return optuna.load_study(study_name=record["study_name"], storage=record["storage"])


# ~32 s (two runs of a 4-trial search); `make test-slow` runs it
@pytest.mark.slow
def test_a_killed_search_resumes_without_losing_or_repeating_trials(tmp_path, shared_cache):
    sweep = tmp_path / "search"
    command = _search_command(tmp_path, sweep, "hydra.sweeper.n_trials=4",
                              "hydra.sweeper.sampler.n_startup_trials=4")  # all random: replays would show
    env = environment(shared_cache)
    with started(command, tmp_path / "first.log", env=env, cwd=tmp_path) as process:
        deadline = time.monotonic() + 400
        while list(_states(sweep / "optuna.db").values()).count("COMPLETE") < 2:
            assert process.poll() is None, tail(tmp_path / "first.log")
            assert time.monotonic() < deadline, tail(tmp_path / "first.log")
            time.sleep(0.2)
    before = {t.number: t for t in _study(sweep).get_trials() if t.state.name == "COMPLETE"}
    assert sorted(before) == [0, 1]
    output = run(command, tmp_path / "second.log", env=env, cwd=tmp_path, timeout=400)
    assert "Resuming study 'finetune_k3_seed0': 2 of 4 trials complete" in output
    assert output.count("Launching 1 jobs locally") == 2  # N + remaining = 4: two more, no more
    trials = _study(sweep).get_trials()
    assert [(t.number, t.state.name) for t in trials] == [(n, "COMPLETE") for n in range(4)]
    for number, trial in before.items():  # kept, not run again
        assert (trials[number].value, trials[number].datetime_complete) == (trial.value, trial.datetime_complete)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    for number in range(4):  # job folder n holds trial n
        results = json.loads((sweep / str(number) / "results.json").read_text())
        assert results["status"] == "ok"
        assert results["transfer"]["validation"]["accuracy_pooled"] == trials[number].value
    assert not (sweep / "4").exists()
    best = (sweep / "best_overrides.txt").read_text().splitlines()
    assert "experiment=demo" in best and not any(line.startswith("hparams_search=") for line in best)
    summary = run(entry_point("summarize.py", str(sweep)), tmp_path / "summary.log",
                  env=env, cwd=tmp_path, timeout=120)
    assert "4 complete of 4 trials" in summary
    for name in ("search_trials.csv", "optimization_history.png", "param_importances.png"):
        assert (sweep / name).is_file(), name


def _target_folders(tmp_path: Path) -> tuple[Path, Path]:
    """The tiny target as two recording folders whose labels differ only in the held-out half."""
    from data_gen import SynthesisConfig, write_synthetic
    from esort_jax.config import from_dict
    from esort_jax.io import read_recording_folder, write_recording_folder
    from esort_jax.recording import Sorting

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        data = compose("synthesize", overrides=["data=tiny", "seed=0"]).data
    write_synthetic(from_dict(SynthesisConfig, OmegaConf.to_container(data, resolve=True), "data"),
                    tmp_path / "synth")
    recording, truth = read_recording_folder(tmp_path / "synth")
    held_out = truth.samples >= recording.num_samples // 2  # windows.train_fraction 0.5
    rng = np.random.default_rng(7)
    keep = ~held_out | (rng.random(truth.samples.size) < 0.5)  # drop half, move the rest, add some
    samples = np.where(held_out, truth.samples + rng.integers(-40, 40, truth.samples.size), truth.samples)[keep]
    units = truth.unit_indices[keep]
    extra = rng.integers(recording.num_samples // 2 + 100, recording.num_samples - 100, 50)
    samples = np.concatenate([samples, extra])
    units = np.concatenate([units, rng.integers(0, truth.num_units, extra.size)])
    order = np.lexsort((units, samples))
    perturbed = Sorting(samples[order], units[order], truth.unit_ids, truth.sampling_frequency)
    plain = Sorting(truth.samples, truth.unit_indices, truth.unit_ids, truth.sampling_frequency)
    return (write_recording_folder(tmp_path / "original", recording, plain),
            write_recording_folder(tmp_path / "perturbed", recording, perturbed))


def test_held_out_labels_cannot_change_the_chosen_trial(tmp_path, shared_cache):
    original, perturbed = _target_folders(tmp_path)
    searches = {}
    for name, folder in (("original", original), ("perturbed", perturbed)):
        sweep = tmp_path / f"search_{name}"
        run(_search_command(tmp_path, sweep, f"target.path={folder}", "hydra.sweeper.n_trials=3",
                            "hydra.sweeper.sampler.n_startup_trials=2"),
            tmp_path / f"{name}.log", env=environment(shared_cache), cwd=tmp_path, timeout=400)
        study = _study(sweep)
        held_out = [json.loads((sweep / str(t.number) / "results.json").read_text())["transfer"]["accuracy_pooled"]
                    for t in study.trials]
        searches[name] = ([(t.params, t.value) for t in study.trials], study.best_trial.number, held_out)
    assert searches["original"][:2] == searches["perturbed"][:2]  # same trials, values, best trial
    assert searches["original"][2] != searches["perturbed"][2]    # while the held-out scores moved
