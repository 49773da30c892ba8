"""Conventional sorters side by side with E-Sort on the same recording and the same held-out span.

    python experiments/baselines.py                                     # 64-channel CPU default
    python experiments/baselines.py sorters=[kilosort4] esort.ks=[10]
    python experiments/baselines.py span=full                           # sorters see everything
    python experiments/baselines.py target.path=<recording>.h5            # a file with ground truth

Needs the optional stack (`make baselines-venv`). Stages: the target recording (synthesised
through the cache or loaded; the same spec as transfer.py) → each sorter through SpikeInterface's
run_sorter on the evaluation span (`span: eval`, the held-out part after
finetune.windows.train_fraction, split exactly as E-Sort's windows split it) or on the whole
recording (`span: full`), scored by our evaluator on the span E-Sort is scored on (unknown
identities: Hungarian matching) → optionally E-Sort's transfer and scratch arms at each K of
`esort.ks` (pretraining cached and shared with transfer.py) → a comparison table (stdout and
results.json), comparison.csv, comparison.png, the speed ratio of each sorter against E-Sort and
the K E-Sort needs to reach the reference sorter's accuracy.

Into the run folder: `sorters/<name>/sorter/` (the sorter's own output), `sorters/<name>/sorting.npz`
(absolute samples), `k<K>/<arm>/` (E-Sort's training folder and sorting.npz), comparison.csv,
comparison.png, results.json.
"""

from __future__ import annotations

import hydra
import numpy as np
from omegaconf import DictConfig

from esort_jax.realdata.baselines import BaselinesConfig, evaluation_spans, run_and_score, sorter_params
from esort_jax.report import comparison
from esort_jax.report.plots import plot_comparison
from experiments._common import Run, prepare_process
from experiments._data import check_synthesis, target_with_truth
from experiments._plans import BaselinesPlan, check_ks, read_plan
from experiments._report import log_figures, log_scalars, log_table, show
from esort_jax.report.snr import snr_summary
from experiments._stages import arm_pipelines, arms_at_ks, pretrain_for_arms, target_snr


def _run_sorter(run, name: str, recording, truth, spans: dict, params: dict, sorters: BaselinesConfig,
                tolerance_ms: float) -> dict:
    """One sorter, timed as a stage: its results.json entry (a failure is reported, not raised)."""
    with run.stage(name):
        metrics = run_and_score(name, recording, truth, run.dir / "sorters" / name, spans, params=params,
                                n_jobs=sorters.n_jobs, keep_recording_copy=sorters.keep_recording_copy,
                                tolerance_ms=tolerance_ms)
        if metrics["status"] != "ok":
            print(f"[baselines] {name} FAILED:\n{metrics['error']}", flush=True)
            return metrics
        metrics.update(snr_summary(metrics["per_unit"], target_snr(recording, truth), truth.unit_ids))
        log_scalars(run, {name: metrics})
        print(f"[baselines] {name} {metrics['sorter_version']}: accuracy_pooled {metrics['accuracy_pooled']:.3f}, "
              f"{metrics['num_units_found']} units found, {metrics['sort_seconds']:.1f} s", flush=True)
    return metrics


def _esort_metrics(run, name: str, metrics: dict, outcome) -> dict:
    """An E-Sort arm's metrics with the keys a sorter's entry has (status, training time,
    units found, version)."""
    counts = outcome.sort_result.sorting.spike_counts()
    return {**metrics, "status": "ok", "train_seconds": run.seconds.get(f"{name}: fine-tune"),
            "num_units_found": int(np.count_nonzero(counts)), "sorter_version": "esort_jax"}


@hydra.main(version_base=None, config_path="../conf", config_name="baselines")
def main(cfg: DictConfig) -> dict:
    with Run(cfg, "baselines") as run:
        # Every config is typed and validated, and every sorter found installed, before any work.
        seed = int(cfg.seed)
        sorters = read_plan(BaselinesConfig, cfg)
        plan = read_plan(BaselinesPlan, cfg)
        pretrain, finetune = arm_pipelines(cfg)
        tolerance_ms = finetune.evaluation.tolerance_ms
        check_ks(finetune, plan.esort.ks)
        params = {name: sorter_params(name, sorters.overrides(name), "sorter_params") for name in sorters.sorters}
        check_synthesis(run, "target", *(["source"] if plan.esort.ks and "transfer" in plan.esort.arms else []))

        target, truth, target_entry = target_with_truth(run, "score with")
        spans = evaluation_spans(target.num_samples, finetune.windows, finetune.model, sorters.span)
        run.results.update(target=target_entry, spans=spans, sorters={})
        rows: list[dict] = []
        csv_path = run.dir / "comparison.csv"
        # Sorters first: SpikeInterface's worker pools start before JAX starts its threads.
        for name in sorters.sorters:
            metrics = run.results["sorters"][name] = _run_sorter(run, name, target, truth, spans, params[name],
                                                                 sorters, tolerance_ms)
            rows.append(comparison.method_row(name, "sorter", metrics))
            comparison.write_comparison_csv(csv_path, rows)  # a killed run keeps what it finished
        if plan.esort.ks:
            checkpoint = pretrain_for_arms(run, plan.esort.arms, target, target_entry, pretrain, seed=seed)
            run.results["esort"] = {}
            for k, arm, metrics, outcome in arms_at_ks(run, "", target, truth, finetune, plan.esort.arms,
                                                       plan.esort.ks, checkpoint, seed=seed):
                metrics = run.results["esort"].setdefault(f"k{k}", {})[arm] = _esort_metrics(
                    run, f"k{k}/{arm}", metrics, outcome)
                rows.append(comparison.method_row(f"{arm} K={k}", "esort", metrics, arm=arm, k=k))
                comparison.write_comparison_csv(csv_path, rows)

        run.results.update(comparison.comparison_summary(rows, run.results["sorters"], plan.metric,
                                                         sorters.reference_sorter))
        comparison.write_comparison_csv(csv_path, run.results["rows"])
        run.results["csv"] = str(csv_path)
        plot_comparison(run.results, run.dir / "comparison.png")
        run.results["figures"] = {"comparison": str(run.dir / "comparison.png")}
        log_figures(run, run.results["figures"])
        log_table(run, "comparison", comparison.ROW_COLUMNS, run.results["rows"])
        show(run, comparison.comparison_header(run.results, tolerance_ms), comparison.comparison_text(run.results))
    return run.results


if __name__ == "__main__":
    prepare_process()
    main()
