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
import dataclasses

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from data_gen import SynthesisConfig
from esort_jax.config import ConfigError
from esort_jax.report.csv_writer import csv_columns, write_csv
from esort_jax.report.curves import LEADING_COLUMNS, SUMMARY_METRICS, result_row, summarise
from esort_jax.report.plots import label_efficiency_figures
from esort_jax.report.tables import label_efficiency_table
from esort_jax.transfer import INITS
from experiments._common import Run, pipeline_config, prepare_process, to_container, typed
from experiments._data import obtain_recording
from experiments._stages import arm_config, pretrained_on_source, run_arm


# ----------------------------------------------------------------------------------------------
# Configuration helpers


def seeded(cfg: DictConfig, seed: int) -> DictConfig:
    """A copy of cfg with `seed` replaced (interpolations such as target.data.seed follow)."""
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.seed = int(seed)
    return out


def _int_list(cfg: DictConfig, key: str, minimum: int) -> list[int]:
    values = to_container(cfg.get(key))
    if isinstance(values, int):
        values = [values]
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{key}: must be a non-empty list of integers; got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"{key}: every entry must be an integer >= {minimum}; got {values!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{key}: entries must be distinct; got {values!r}")
    return values


# ----------------------------------------------------------------------------------------------
# The entry point


@hydra.main(version_base=None, config_path="../conf", config_name="label_efficiency")
def main(cfg: DictConfig) -> dict:
    with Run(cfg, "label_efficiency") as run:
        # Every config is typed and validated before any work.
        ks = sorted(_int_list(cfg, "ks", 1))
        seeds = _int_list(cfg, "seeds", 0)
        arms = list(cfg.arms)
        if not arms or any(a not in INITS for a in arms) or len(set(arms)) != len(arms):
            raise ConfigError(f"arms: must be a non-empty subset of {list(INITS)}; got {arms}")
        metric = str(cfg.metric)
        if metric not in SUMMARY_METRICS:
            raise ConfigError(f"metric: must be one of {list(SUMMARY_METRICS)}; got {metric!r}")
        reference = cfg.get("reference_accuracy")
        if reference is not None and not 0.0 < float(reference) <= 1.0:
            raise ConfigError(f"reference_accuracy: must lie in (0, 1] or be null; got {reference}")
        # Per seed: the pretraining and fine-tuning configs (seed interpolations resolved per seed).
        configs = {seed: (pipeline_config(seeded(cfg, seed), windows="pretrain.windows", train="pretrain.train",
                                          transfer="finetune.transfer"),
                          pipeline_config(seeded(cfg, seed), windows="finetune.windows", train="finetune.train",
                                          transfer="finetune.transfer"))
                   for seed in seeds}
        ft_windows = configs[seeds[0]][1].windows
        for k in ks:
            dataclasses.replace(ft_windows, spikes_per_unit=k).validate("finetune.windows")
        if cfg.target.get("path") is None:
            run.typed(SynthesisConfig, "target.data")
        if "transfer" in arms and cfg.source.get("path") is None:
            run.typed(SynthesisConfig, "source.data")

        run.results.update(
            ks=ks, seeds=seeds, arms=arms, metric=metric, reference_accuracy=reference,
            short_units_policy=ft_windows.short_units,
            short_units_note=(
                f"units with fewer than K spikes in the training span follow finetune.windows.short_units="
                f"'{ft_windows.short_units}' ('keep_all': they train on the spikes they have; 'drop': "
                "they are left out of training and all their spikes count as missed); each row's "
                "`short_units` counts them"
            ),
            per_seed={}, rows=[],
        )
        rows: list[dict] = run.results["rows"]
        csv_path = run.dir / "label_efficiency.csv"

        for seed in seeds:
            scfg = seeded(cfg, seed)
            target_data = typed(SynthesisConfig, scfg, "target.data") if cfg.target.get("path") is None else None
            target, truth, target_info = obtain_recording(run, "target", data=target_data)
            if truth is None:
                raise ConfigError(f"target.path: {target_info.get('path')} has no ground truth to train and score with")
            info = {"target": {**target_info, "num_units": truth.num_units, "num_channels": target.num_channels,
                               "duration_s": target.duration_s}}
            pretrain, finetune = configs[seed]
            checkpoint = None
            if "transfer" in arms:
                checkpoint, info["pretrain"] = pretrained_on_source(run, target, target_info, pretrain, seed=seed, cfg=scfg)
            run.results["per_seed"][str(seed)] = info
            for k in ks:
                for arm in arms:
                    config = arm_config(finetune, arm, checkpoint, k)
                    metrics, _ = run_arm(run, f"seed{seed}/k{k}/{arm}", target, truth, config, seed=seed)
                    rows.append(result_row(seed, k, arm, metrics))
                    write_csv(csv_path, rows, csv_columns(rows, LEADING_COLUMNS))  # a killed run keeps what it finished
                    value = metrics.get(metric)
                    print(f"[label_efficiency] seed {seed} K {k} {arm}: {metric} "
                          f"{'-' if value is None else f'{value:.3f}'}", flush=True)

        run.results.update(summarise(rows, arms, metric, reference))
        if "label_reduction" in run.results:
            run.results["label_reduction_ratio"] = run.results["label_reduction"]["headline"]["ratio"]
        run.results["csv"] = str(csv_path)
        run.results["figures"] = label_efficiency_figures(run.results, run.dir)
        for name, path in run.results["figures"].items():
            run.logger.image(name, path)
        columns = list(LEADING_COLUMNS) + [c for c in SUMMARY_METRICS] + ["short_units"]
        run.logger.table("label_efficiency", columns, [[r.get(c) for c in columns] for r in rows])
        summary_columns = ["k", "arm", "n_seeds"] + [f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "std")]
        run.logger.table("label_efficiency_summary", summary_columns,
                         [[r.get(c) for c in summary_columns] for r in run.results["summary"]])
        table = label_efficiency_table(run.results, metric)
        run.results["table"] = table
        print()
        print(f"Label efficiency on the target's held-out half: K in {ks}, seeds {seeds}, "
              f"tolerance {configs[seeds[0]][1].evaluation.tolerance_ms} ms, short units: {ft_windows.short_units}")
        print(table)
    return run.results


if __name__ == "__main__":
    prepare_process()
    main()
