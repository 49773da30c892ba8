"""Conventional sorters side by side with E-Sort on the same recording and the same held-out span.

    python experiments/baselines.py                                     # 64-channel CPU default
    python experiments/baselines.py sorters=[kilosort4] esort.ks=[10]
    python experiments/baselines.py span=full                           # sorters see everything
    python experiments/baselines.py target.path=/data/rec.h5            # a file with ground truth

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

import dataclasses

import hydra
import numpy as np
from omegaconf import DictConfig

from data_gen import SynthesisConfig
from esort_jax.report import comparison
from esort_jax.report.comparison import label_reach, ordered_rows, write_comparison_csv
from esort_jax.report.plots import plot_comparison
from esort_jax.realdata.baselines import (
    BaselineResult,
    BaselinesConfig,
    SorterFailed,
    run_baseline,
    sorted_span,
    sorter_params,
)
from esort_jax.config import ConfigError, from_dict, require
from esort_jax.evaluate import EvaluationConfig, EvaluationResult, evaluate, scored_span
from esort_jax.io import write_sorting_npz
from esort_jax.model import ModelConfig
from esort_jax.transfer import INITS
from esort_jax.windows import WindowConfig, split_spans
from experiments._common import Run, prepare_process, to_container
from experiments._data import obtain_recording
from experiments._stages import arm_config, pretrained_on_source, run_arm

ESORT_ARMS = INITS  # an arm is the init of its network
PLAN_KEYS = ("sorters", "span", "sorter_params", "n_jobs", "keep_recording_copy", "reference_sorter")
PAPER_REDUCTION = 2.25  # the paper: transfer needs ~2.25x fewer labels to reach Kilosort4's accuracy


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class ESortArms:
    """Which E-Sort arms run beside the sorters: `arms` at every K of `ks` (empty: none)."""

    ks: tuple[int, ...] = (1, 2, 5, 10, 15)
    arms: tuple[str, ...] = ESORT_ARMS

    def validate(self, where: str = "esort") -> None:
        for i, k in enumerate(self.ks):
            require(k >= 1, f"{where}.ks[{i}]", f"must be >= 1 (labelled spikes per unit); got {k}")
        require(len(set(self.ks)) == len(self.ks), f"{where}.ks", f"entries must be distinct; got {list(self.ks)}")
        require(
            len(self.arms) > 0 and all(a in ESORT_ARMS for a in self.arms) and len(set(self.arms)) == len(self.arms),
            f"{where}.arms", f"must be a non-empty subset of {list(ESORT_ARMS)}; got {list(self.arms)}",
        )


def plan_from_config(cfg: DictConfig) -> BaselinesConfig:
    """The sorter plan from the top-level keys (errors name the key, e.g. `sorters[1]`)."""
    return from_dict(BaselinesConfig, {key: to_container(cfg.get(key)) for key in PLAN_KEYS if key in cfg}, "")


def evaluation_spans(num_samples: int, windows: WindowConfig, model: ModelConfig, mode: str) -> dict:
    """The spans of a comparison, in samples:
      eval_span: the held-out span, split as E-Sort's `make_windows` splits the recording;
      scored_span: where everything is scored, the samples `sort_and_evaluate` scores E-Sort on;
      sorted_span: what the sorters see ('eval': the held-out span, 'full': everything)."""
    _, eval_span = split_spans(num_samples, windows)
    return {
        "span": mode,
        "train_fraction": windows.train_fraction,
        "eval_span": list(eval_span),
        "scored_span": list(scored_span(eval_span, window=model.window, anchor=model.anchor)),
        "sorted_span": list(sorted_span(mode, num_samples, eval_span)),
    }


# ----------------------------------------------------------------------------------------------
# Metrics


def sorter_metrics(result: BaselineResult, evaluation: EvaluationResult) -> dict:
    """results.json entry of one sorter: the keys of transfer.py's arms where they apply."""
    import spikeinterface

    return {
        "status": "ok",
        **evaluation.to_dict(),
        "sort_seconds": result.wall_seconds,
        "sorter_run_seconds": result.sorter_seconds,
        "sorted_duration_s": result.sorted_duration_s,
        "sorted_span": list(result.span),
        "num_units_found": result.num_units_found,
        "num_spikes_found": result.sorting.num_spikes,
        "sorter_version": result.version,
        "spikeinterface_version": spikeinterface.__version__,
        "params": result.params,
        "folder": str(result.folder),
        "per_unit": evaluation.per_unit(),
    }


# ----------------------------------------------------------------------------------------------
# The entry point


def _run_sorter(run, name: str, recording, truth, spans: dict, params: dict, plan: BaselinesConfig,
                evaluation: EvaluationConfig) -> dict:
    folder = run.dir / "sorters" / name
    try:
        result = run_baseline(name, recording, folder, span=tuple(spans["sorted_span"]), params=params,
                              n_jobs=plan.n_jobs, keep_recording_copy=plan.keep_recording_copy)
    except SorterFailed as error:
        print(f"[baselines] {name} FAILED:\n{error}", flush=True)
        return {"status": "failed", "error": str(error), "params": params}
    scored = evaluate(result.sorting, truth, tolerance_ms=evaluation.tolerance_ms, identities="unknown",
                      span=tuple(spans["scored_span"]))
    write_sorting_npz(folder / "sorting.npz", result.sorting)
    metrics = sorter_metrics(result, scored)
    run.logger.log({f"{name}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    print(f"[baselines] {name} {result.version}: accuracy_pooled {metrics['accuracy_pooled']:.3f}, "
          f"{metrics['num_units_found']} units found, {metrics['sort_seconds']:.1f} s", flush=True)
    return metrics


@hydra.main(version_base=None, config_path="../conf", config_name="baselines")
def main(cfg: DictConfig) -> dict:
    with Run(cfg, "baselines") as run:
        # Every config is typed and validated, and every sorter found installed, before any work.
        seed = int(cfg.seed)
        plan = plan_from_config(cfg)
        esort = run.typed(ESortArms, "esort")
        metric = str(cfg.get("metric", "accuracy_pooled"))
        if metric not in comparison.REACH_METRICS:
            raise ConfigError(f"metric: must be one of {list(comparison.REACH_METRICS)}; got {metric!r}")
        pretrain = run.pipeline_config(windows="pretrain.windows", train="pretrain.train", transfer="finetune.transfer")
        finetune = run.pipeline_config(windows="finetune.windows", train="finetune.train", transfer="finetune.transfer")
        model, ft_windows, evaluation = finetune.model, finetune.windows, finetune.evaluation
        for k in esort.ks:
            dataclasses.replace(ft_windows, spikes_per_unit=k).validate("finetune.windows")
        params = {name: sorter_params(name, plan.overrides(name), "sorter_params") for name in plan.sorters}
        if cfg.target.get("path") is None:
            run.typed(SynthesisConfig, "target.data")
        if esort.ks and "transfer" in esort.arms and cfg.source.get("path") is None:
            run.typed(SynthesisConfig, "source.data")

        target, truth, target_info = obtain_recording(run, "target")
        if truth is None:
            raise ConfigError(f"target.path: {target_info.get('path')} has no ground truth to score with")
        spans = evaluation_spans(target.num_samples, ft_windows, model, plan.span)
        run.results["target"] = {**target_info, "num_units": truth.num_units,
                                 "num_channels": target.num_channels, "duration_s": target.duration_s}
        run.results["spans"] = spans
        run.results["sorters"] = {}
        rows: list[dict] = []
        csv_path = run.dir / "comparison.csv"

        # Sorters first: SpikeInterface's worker pools start before JAX starts its threads.
        for name in plan.sorters:
            with run.stage(name):
                metrics = _run_sorter(run, name, target, truth, spans, params[name], plan, evaluation)
            run.results["sorters"][name] = metrics
            rows.append(comparison.method_row(name, "sorter", metrics))
            write_comparison_csv(csv_path, rows)  # a killed run keeps what it finished

        if esort.ks:
            checkpoint = None
            if "transfer" in esort.arms:
                checkpoint, run.results["pretrain"] = pretrained_on_source(run, target, target_info, pretrain, seed=seed)
            run.results["esort"] = {}
            for k in esort.ks:
                for arm in esort.arms:
                    name = f"k{k}/{arm}"
                    metrics, outcome = run_arm(run, name, target, truth, arm_config(finetune, arm, checkpoint, k),
                                               seed=seed)
                    counts = outcome.sort_result.sorting.spike_counts()
                    metrics.update(
                        status="ok",
                        train_seconds=run.seconds.get(f"{name}: fine-tune"),
                        num_units_found=int(np.count_nonzero(counts)),
                        sorter_version="esort_jax",
                    )
                    run.results["esort"].setdefault(f"k{k}", {})[arm] = metrics
                    rows.append(comparison.method_row(f"{arm} K={k}", "esort", metrics, arm=arm, k=k))
                    write_comparison_csv(csv_path, rows)

        rows = ordered_rows(rows)
        ratios = comparison.speed_ratios(rows)
        run.results["rows"] = rows
        run.results["speed_ratio"] = ratios
        run.results["esort_seconds_per_data_second"] = comparison.esort_seconds_per_data_second(rows)
        run.results["failed_sorters"] = [n for n, m in run.results["sorters"].items() if m.get("status") != "ok"]
        reach = label_reach(rows, run.results["sorters"], metric) if esort.ks else {}
        run.results["k_to_reach"] = reach
        reference = reach.get(plan.reference_sorter) if plan.reference_sorter else None
        run.results["reference_sorter"] = plan.reference_sorter
        run.results["label_reduction_vs_reference"] = reference["ratio"] if reference else None
        write_comparison_csv(csv_path, rows)
        run.results["csv"] = str(csv_path)
        figure = run.dir / "comparison.png"
        plot_comparison(run.results, figure)
        run.logger.image("comparison", figure)
        run.results["figures"] = {"comparison": str(figure)}
        columns = ["method", "kind", "arm", "k", "status", *comparison.METRIC_KEYS]
        run.logger.table("comparison", columns, [[r.get(c) for c in columns] for r in rows])

        table = comparison.comparison_table(rows)
        lines = [table, ""]
        for name, ratio in ratios.items():
            if ratio is not None:
                lines.append(f"{name} is {ratio:.1f}x slower than E-Sort's sorting per second of data")
        for name, entry in reach.items():
            lines.append(f"K to reach {name}'s {entry['text']}")
        if reference and reference["ratio"] is not None:
            lines.append(f"label reduction at {plan.reference_sorter}'s accuracy: {reference['ratio']:.2f}x "
                         f"(paper: ~{PAPER_REDUCTION}x)")
        run.results["table"] = "\n".join(lines).rstrip()
        print()
        print(
            f"Sorters and E-Sort on the target's held-out span: {truth.num_units} units, "
            f"{target.num_channels} channels, sorters on span '{plan.span}' "
            f"{spans['sorted_span']}, scored on {spans['scored_span']}, tolerance {evaluation.tolerance_ms} ms"
        )
        print(run.results["table"])
    return run.results


if __name__ == "__main__":
    prepare_process()
    main()
