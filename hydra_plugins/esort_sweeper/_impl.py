"""The resumable Optuna search behind `hydra/sweeper=optuna_resumable` (resumable_optuna.py says
what it adds to hydra-optuna-sweeper 1.2.0, whose search-space parsing it reuses).

The driver loop: open (or create) the study; refuse one started with another search definition;
run again the trials a killed driver left running; then ask, launch and tell batches of `n_jobs`
trials until the study holds `n_trials` completed ones. Job number = trial number throughout.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

# optuna 2.10's storage uses SQLAlchemy 1.4 APIs that 2.0 removed (pinned 1.4): no banner about it.
os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")
import optuna  # noqa: E402
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from optuna.distributions import distribution_to_json  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from esort_jax.report.search import best_overrides_text  # noqa: E402

log = logging.getLogger(__name__)

SEARCH_RECORD = "search.json"          # storage, study, metric: what experiments/summarize.py reads
BEST_OVERRIDES = "best_overrides.txt"  # the best trial's overrides, one a line
OVERRIDES_ATTR = "hydra_overrides"     # trial user attribute: the overrides the trial's job ran with
DEFINITION_ATTR = "search_definition"  # study user attribute: fixed overrides + search space


def hydra_value(value: Any) -> str:
    """A sampled value as Hydra override text (None is `null`; upstream wrote `None`, a string)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def storage_url(storage: Any) -> str | None:
    """The storage URL with a SQLite file's path made absolute and its folder created."""
    if storage is None:
        return None
    url = str(storage)
    prefix = "sqlite:///"
    if url.startswith(prefix):
        path = Path(url[len(prefix):]).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    return url


def reseed(sampler: Any, seed: int | None, offset: int) -> None:
    """Give `sampler` (and the random sampler inside TPE / CMA-ES) a fresh stream derived from
    (seed, offset): a resumed search must not draw its first trials' random parameters again."""
    if seed is None:
        sampler.reseed_rng()
        return
    streams = np.random.SeedSequence([int(seed), int(offset)]).generate_state(4)
    owners = [sampler] + [getattr(sampler, name, None) for name in ("_random_sampler", "_independent_sampler")]
    for owner, state in zip(owners, streams):
        if owner is not None and hasattr(owner, "_rng"):
            owner._rng = np.random.RandomState(int(state))


def objective_values(value: Any, count: int) -> list[float]:
    """The task's return value as `count` objective values (a clear error otherwise)."""
    try:
        values = [float(value)] if count == 1 else [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"the task must return {'a number' if count == 1 else f'{count} numbers'} for the "
                         f"search (set optimized_metric); got {str(value)[:200]!r}") from None
    if len(values) != count:
        raise ValueError(f"the task returned {len(values)} objective values for {count} directions")
    return values


def write_json_atomically(path: Path, payload: dict) -> None:
    """`payload` as JSON at `path` via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(temporary, path)


class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
    """hydra-optuna-sweeper's implementation with a resumable `sweep` (module docstring)."""

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        if isinstance(self.sampler, functools.partial):  # how Hydra hands over a GridSampler
            raise ValueError("hydra/sweeper=optuna_resumable does not run GridSampler; use the basic sweeper "
                             "for a grid (--multirun key=a,b)")
        self._process_searchspace_config()
        space, fixed = create_params_from_overrides(self._parse_sweeper_params_config() + list(arguments))
        for name in fixed:
            space.pop(name, None)
        directions = self._get_directions()
        study = self._open_study(directions, space, fixed)
        self._write_record(study, directions, space)
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            log.info(f"Trial {frozen.number} was left running by a stopped search: running it again")
            trial = self._configure(optuna.trial.Trial(study, frozen._trial_id), space, fixed)
            self._run(study, [trial.number], [trial.user_attrs[OVERRIDES_ATTR]], len(directions))
        while (missing := self.n_trials - _completed(study)) > 0:
            batch = [self._configure(study.ask(), space, fixed) for _ in range(min(self.n_jobs, missing))]
            self._run(study, [t.number for t in batch], [t.user_attrs[OVERRIDES_ATTR] for t in batch],
                      len(directions))
        self._write_outcome(study, directions)

    def _open_study(self, directions: list[str], space: dict, fixed: dict) -> optuna.study.Study:
        """The study (created or loaded); a loaded one must have this search's definition."""
        url = storage_url(self.storage)
        if url is None:
            log.warning("hydra.sweeper.storage is null: the search lives in memory and cannot be resumed")
        study = optuna.create_study(study_name=self.study_name, storage=url, sampler=self.sampler,
                                    directions=directions, load_if_exists=True)
        definition = {"fixed": {k: str(v) for k, v in sorted(fixed.items())},
                      "space": {k: distribution_to_json(d) for k, d in sorted(space.items())}}
        recorded = study.user_attrs.get(DEFINITION_ATTR)
        if recorded is None:
            study.set_user_attr(DEFINITION_ATTR, definition)
        elif recorded != definition:
            raise ValueError(f"study {study.study_name!r} in {url} was started with another search (overrides or "
                             f"space): {recorded}; now {definition}. Resume it with the same command, or choose "
                             "another hydra.sweeper.study_name")
        existing = len(study.get_trials(deepcopy=False))
        if existing:
            reseed(self.sampler, OmegaConf.select(self.config, "hydra.sweeper.sampler.seed"), existing)
            log.info(f"Resuming study {study.study_name!r}: {_completed(study)} of {self.n_trials} trials complete")
        return study

    def _configure(self, trial: optuna.trial.Trial, space: dict, fixed: dict) -> optuna.trial.Trial:
        """`trial` with its parameters drawn (those it already has are kept: a trial a killed
        search had asked for keeps what it drew) and its job's overrides stored on it."""
        for name, distribution in space.items():
            trial._suggest(name, distribution)
        if self.custom_search_space_extender:
            self.custom_search_space_extender(self.config, trial)
        overlap = set(trial.params) & set(fixed)
        if overlap:
            raise ValueError(f"parameters both searched and fixed: {sorted(overlap)}")
        params = {**trial.params, **fixed}
        trial.set_user_attr(OVERRIDES_ATTR, [f"{name}={hydra_value(value)}" for name, value in params.items()])
        return trial

    def _run(self, study: optuna.study.Study, numbers: Sequence[int], overrides: Sequence[Sequence[str]],
             count: int) -> None:
        """Launch the trials `numbers` (consecutive) as jobs of the same numbers; tell the results.
        A failed job is told FAIL and stops the search (as hydra-optuna-sweeper does)."""
        assert list(numbers) == list(range(numbers[0], numbers[0] + len(numbers))), numbers
        returns = self.launcher.launch([tuple(o) for o in overrides], initial_job_idx=numbers[0])
        for number, result in zip(numbers, returns):
            try:
                values = objective_values(result.return_value, count)
            except Exception:
                study.tell(number, state=TrialState.FAIL)
                raise
            study.tell(number, values=values)

    def _write_record(self, study: optuna.study.Study, directions: list[str], space: dict) -> None:
        """search.json in the sweep folder: how to find and read this search."""
        write_json_atomically(Path(str(self.config.hydra.sweep.dir)) / SEARCH_RECORD, {
            "storage": storage_url(self.storage), "study_name": study.study_name, "directions": directions,
            "n_trials": self.n_trials, "optimized_metric": OmegaConf.select(self.config, "optimized_metric"),
            "entry_point": f"experiments/{self.config.hydra.job.name}.py", "space": sorted(space),
        })

    def _write_outcome(self, study: optuna.study.Study, directions: list[str]) -> None:
        """optimization_results.yaml (as upstream) and best_overrides.txt (single objective)."""
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        if len(directions) > 1:
            front = [{"params": t.params, "values": t.values} for t in study.best_trials]
            OmegaConf.save(OmegaConf.create({"name": "optuna", "solutions": front}),
                           sweep_dir / "optimization_results.yaml")
            return
        best = study.best_trial
        log.info(f"Best trial {best.number}: value {best.value}, parameters {best.params}")
        OmegaConf.save(OmegaConf.create({"name": "optuna", "best_trial": best.number, "best_params": best.params,
                                         "best_value": best.value}), sweep_dir / "optimization_results.yaml")
        (sweep_dir / BEST_OVERRIDES).write_text(best_overrides_text(
            best.user_attrs.get(OVERRIDES_ATTR, []), best.number, best.value, study.study_name,
            OmegaConf.select(self.config, "optimized_metric"), f"experiments/{self.config.hydra.job.name}.py"))


def _completed(study: optuna.study.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

