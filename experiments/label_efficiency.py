"""Label efficiency: accuracy against K labelled spikes per unit, transfer vs scratch, over seeds.

    python experiments/label_efficiency.py                          # K in [1,2,5,10,15,20], seeds 0,1,2
    python experiments/label_efficiency.py ks=[5,10,15] seeds=[0,1]
    python experiments/label_efficiency.py experiment=paper_np1      # paper scale (GPU/TPU)

One process: for each seed, the target and source recordings (synthesised through the cache or
loaded) and one pretraining on the source (cached: shared with `transfer.py seed=<seed>`); then
for each K and arm, fine-tune on the target's first K spikes per unit, sort the held-out half and
evaluate. Writes into the run folder:

  label_efficiency.csv   one row per seed x K x arm with every scalar metric
  results.json           summary (mean/std over seeds per K and arm; also as by_k), gain,
                         label_reduction, rows
  label_efficiency.png   accuracy vs K with error bars (pooled and per-unit mean)
  accuracy_gain.png      transfer - scratch per K (paired by seed)
  label_reduction.png    K_scratch / K_transfer at the accuracy levels transfer reaches
  seed<s>/k<K>/<arm>/    the arm's training folder and sorting.npz

The rows, summary, table and figures come from esort_jax.report (curves, tables, plots), which
take a loaded results.json, so notebooks redraw the same figures.
"""

from __future__ import annotations

import copy

import hydra
from omegaconf import DictConfig, open_dict

from esort_jax.report.csv_writer import csv_columns, write_csv
from esort_jax.report.curves import (LEADING_COLUMNS, ROW_TABLE_COLUMNS, SUMMARY_TABLE_COLUMNS, result_row,
                                     short_units_note, summarise)
from esort_jax.report.plots import label_efficiency_figures
from esort_jax.report.tables import label_efficiency_header, label_efficiency_table
from experiments._common import Run, prepare_process
from experiments._data import check_synthesis, synthesis_of, target_with_truth
from experiments._plans import LabelEfficiencyPlan, check_ks, read_plan
from experiments._report import log_figures, log_table, show
from experiments._stages import arm_pipelines, arms_at_ks, pretrain_for_arms


def seeded(cfg: DictConfig, seed: int) -> DictConfig:
    """A copy of cfg with `seed` replaced (interpolations such as target.data.seed follow)."""
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.seed = int(seed)
    return out


@hydra.main(version_base=None, config_path="../conf", config_name="label_efficiency")
def main(cfg: DictConfig) -> dict:
    with Run(cfg, "label_efficiency") as run:
        # Every config is typed and validated before any work; seed interpolations per seed.
        plan = read_plan(LabelEfficiencyPlan, cfg)
        ks = sorted(plan.ks)
        configs = {seed: arm_pipelines(seeded(cfg, seed)) for seed in plan.seeds}  # (pretrain, finetune)
        first = configs[plan.seeds[0]][1]
        check_ks(first, ks)
        check_synthesis(run, "target", *(["source"] if "transfer" in plan.arms else []))

        policy = first.windows.short_units
        run.results.update(ks=ks, seeds=list(plan.seeds), arms=list(plan.arms), metric=plan.metric,
                           reference_accuracy=plan.reference_accuracy, short_units_policy=policy,
                           short_units_note=short_units_note(policy), per_seed={}, rows=[])
        rows: list[dict] = run.results["rows"]
        csv_path = run.dir / "label_efficiency.csv"
        for seed in plan.seeds:
            scfg = seeded(cfg, seed)
            pretrain, finetune = configs[seed]
            target, truth, target_entry = target_with_truth(run, "train and score with",
                                                            data=synthesis_of(scfg, "target"))
            info = {"target": target_entry}
            checkpoint = pretrain_for_arms(run, plan.arms, target, target_entry, pretrain, seed=seed, cfg=scfg,
                                           into=info)
            run.results["per_seed"][str(seed)] = info
            for k, arm, metrics, _ in arms_at_ks(run, f"seed{seed}/", target, truth, finetune, plan.arms, ks,
                                                 checkpoint, seed=seed):
                rows.append(result_row(seed, k, arm, metrics))
                write_csv(csv_path, rows, csv_columns(rows, LEADING_COLUMNS))  # a killed run keeps what it finished
                value = metrics.get(plan.metric)
                print(f"[label_efficiency] seed {seed} K {k} {arm}: {plan.metric} "
                      f"{'-' if value is None else f'{value:.3f}'}", flush=True)

        run.results.update(summarise(rows, plan.arms, plan.metric, plan.reference_accuracy), csv=str(csv_path))
        run.results["figures"] = label_efficiency_figures(run.results, run.dir)
        log_figures(run, run.results["figures"])
        log_table(run, "label_efficiency", ROW_TABLE_COLUMNS, rows)
        log_table(run, "label_efficiency_summary", SUMMARY_TABLE_COLUMNS, run.results["summary"])
        show(run, label_efficiency_header(run.results, first.evaluation.tolerance_ms),
             label_efficiency_table(run.results, plan.metric))
    return run.results


if __name__ == "__main__":
    prepare_process()
    main()
