"""`hydra/sweeper=optuna_resumable`: hydra-optuna-sweeper's sweeper (same config keys: sampler,
direction, storage, study_name, n_trials, n_jobs, params), made to survive being killed.

    python experiments/transfer.py --multirun hparams_search=finetune_optuna     # start or resume

What differs from `hydra/sweeper=optuna` (see _impl.ResumableOptunaSweeperImpl):
- `n_trials` is the study's total: started again on the same storage and study name, the search
  keeps its completed trials and runs only the missing ones;
- trials a killed search left running are run again first, with their own parameters, in their
  own folder: job number = Optuna trial number, so sweep folder <n> is trial n across restarts;
- the sweep folder gets search.json (storage, study, metric; what experiments/summarize.py
  reads) at the start and best_overrides.txt (the best trial's overrides, ready to run) at the end.

Only one search may drive a study at a time: trials found running are taken as abandoned.
The module stays light (Hydra imports it at every start; no `from __future__ import
annotations`: Hydra runs it before registering it, so a dataclass could not resolve them);
optuna is imported by _impl.
"""

from dataclasses import dataclass
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from omegaconf import DictConfig


@dataclass
class ResumableOptunaSweeperConf(OptunaSweeperConf):
    """hydra-optuna-sweeper's settings; only the class differs."""

    _target_: str = "hydra_plugins.esort_sweeper.resumable_optuna.ResumableOptunaSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="optuna_resumable", node=ResumableOptunaSweeperConf,
                             provider="esort_jax")


class ResumableOptunaSweeper(Sweeper):
    """Hydra's entry to `_impl.ResumableOptunaSweeperImpl` (constructed lazily: optuna loads
    only when a search runs)."""

    def __init__(self, sampler: Any, direction: Any, storage: Optional[Any], study_name: Optional[str],
                 n_trials: int, n_jobs: int, search_space: Optional[DictConfig],
                 custom_search_space: Optional[str], params: Optional[DictConfig]) -> None:
        from ._impl import ResumableOptunaSweeperImpl

        self.sweeper = ResumableOptunaSweeperImpl(sampler, direction, storage, study_name, n_trials, n_jobs,
                                                  search_space, custom_search_space, params)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> None:
        return self.sweeper.sweep(arguments)
