"""The main job: transfer vs scratch at K labelled spikes per unit, sorted and scored.

    python experiments/transfer.py                    # CPU default: 64-channel NP1 block, 30 s
    python experiments/transfer.py k=5 seed=1 finetune.transfer.freeze=temporal
    python experiments/transfer.py target.path=<recording>.h5   # MEArec file or recording folder

Stages: target and source recordings (synthesised through the cache, or loaded) → pretrain on
the source (cached by config hash) → per arm: fine-tune on the target's training half with K
spikes per unit, choose the threshold on the training half's validation part, sort the
held-out half, evaluate → a table on stdout.

Writes into the run folder: `<arm>/train/` (the arm's training checkpoints), `<arm>/sorting.npz`
(its spikes in the held-out half) and results.json (target, pretrain, k, one object per arm,
the table).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from esort_jax.config import require
from esort_jax.report.tables import ARMS_COLUMNS, arms_header, arms_table
from experiments._common import Run, objective, prepare_process
from experiments._data import check_synthesis, target_with_truth
from experiments._plans import TransferPlan, read_plan
from experiments._report import log_table, show
from experiments._stages import arm_config, arm_pipelines, pretrain_for_arms, run_arm


@hydra.main(version_base=None, config_path="../conf", config_name="transfer")
def main(cfg: DictConfig) -> dict:
    with Run(cfg, "transfer") as run:
        # Every config is typed and validated before any work.
        seed = int(cfg.seed)
        pretrain, finetune = arm_pipelines(cfg)
        plan = read_plan(TransferPlan, cfg)
        require(finetune.windows.spikes_per_unit is not None, "k", "must be >= 1 (labelled spikes per unit)")
        check_synthesis(run, "target", *(["source"] if "transfer" in plan.arms else []))

        target, truth, target_entry = target_with_truth(run, "train and score with")
        checkpoint = pretrain_for_arms(run, plan.arms, target, target_entry, pretrain, seed=seed)
        run.results.update(target=target_entry, k=finetune.windows.spikes_per_unit)
        for arm in plan.arms:
            run.results[arm], _ = run_arm(run, arm, target, truth, arm_config(finetune, arm, checkpoint), seed=seed)

        log_table(run, "arms", [c.key for c in ARMS_COLUMNS], [run.results[arm] for arm in plan.arms])
        show(run, arms_header(run.results, finetune.evaluation.tolerance_ms), arms_table(run.results, plan.arms))
    return objective(cfg, run.results)


if __name__ == "__main__":
    prepare_process()
    main()
