"""The main job: transfer vs scratch at K labelled spikes per unit, sorted and scored.

    python experiments/transfer.py                    # CPU default: 64-channel NP1 block, 30 s
    python experiments/transfer.py k=5 seed=1 finetune.transfer.freeze=temporal
    python experiments/transfer.py target.path=/data/rec.h5   # MEArec file or recording folder

Stages: target and source recordings (synthesised through the cache, or loaded) → pretrain on
the source (cached by config hash) → per arm: fine-tune on the target's training half with K
spikes per unit, choose the threshold on the training half's validation part, sort the
held-out half, evaluate → a table on stdout, results.json with one object per arm.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from data_gen import SynthesisConfig
from esort_jax.config import ConfigError
from esort_jax.report.tables import ARMS_COLUMNS, arms_table
from esort_jax.transfer import INITS
from experiments._common import Run, prepare_process
from experiments._data import obtain_recording
from experiments._stages import arm_config, pretrained_on_source, run_arm


@hydra.main(version_base=None, config_path="../conf", config_name="transfer")
def main(cfg: DictConfig) -> dict:
    with Run(cfg, "transfer") as run:
        # Every config is typed and validated before any work.
        seed = int(cfg.seed)
        pretrain = run.pipeline_config(windows="pretrain.windows", train="pretrain.train", transfer="finetune.transfer")
        finetune = run.pipeline_config(windows="finetune.windows", train="finetune.train", transfer="finetune.transfer")
        arms = list(cfg.arms)
        unknown = [a for a in arms if a not in INITS]
        if unknown or not arms:
            raise ConfigError(f"arms: must be a non-empty subset of {list(INITS)}; got {arms}")
        if finetune.windows.spikes_per_unit is None:
            raise ConfigError("k: must be >= 1 (labelled spikes per unit)")
        if "transfer" in arms and cfg.source.get("path") is None:
            run.typed(SynthesisConfig, "source.data")

        target, truth, target_info = obtain_recording(run, "target")
        if truth is None:
            raise ConfigError(f"target.path: {target_info.get('path')} has no ground truth to train and score with")

        checkpoint = None
        if "transfer" in arms:
            checkpoint, run.results["pretrain"] = pretrained_on_source(run, target, target_info, pretrain, seed=seed)

        run.results["target"] = {**target_info, "num_units": truth.num_units,
                                 "num_channels": target.num_channels, "duration_s": target.duration_s}
        run.results["k"] = finetune.windows.spikes_per_unit
        for arm in arms:
            run.results[arm], _ = run_arm(run, arm, target, truth, arm_config(finetune, arm, checkpoint), seed=seed)

        table = arms_table(run.results, arms)
        run.results["table"] = table
        run.logger.table(
            "arms", [c.key for c in ARMS_COLUMNS],
            [[run.results[a].get(c.key) for c in ARMS_COLUMNS] for a in arms],
        )
        print()
        print(
            f"E-Sort on the target's held-out half: K = {finetune.windows.spikes_per_unit} labelled spikes per unit, "
            f"{truth.num_units} units, {target.num_channels} channels, tolerance {finetune.evaluation.tolerance_ms} ms"
        )
        print(table)
    return run.results


if __name__ == "__main__":
    prepare_process()
    main()
