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

The plot functions below take a loaded results.json, so notebooks redraw the same figures.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from data_gen import SynthesisConfig
from esort_jax.report import curves
from esort_jax.config import ConfigError
from experiments._common import Run, pipeline_config, prepare_process, to_container, typed
from experiments._data import obtain_recording
from experiments._stages import arm_config, pretrained_on_source, run_arm

ARMS = ("transfer", "scratch")
# Aggregated over seeds (mean and std) per K and arm.
SUMMARY_METRICS = (
    "accuracy_pooled", "accuracy_mean", "accuracy_median", "precision_pooled", "recall_pooled",
    "well_detected", "window_jaccard",
)
LEADING_COLUMNS = ("seed", "k", "arm")
ARM_STYLE = {"transfer": ("tab:blue", "o"), "scratch": ("tab:orange", "s")}


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
# Rows, CSV and the summary


def result_row(seed: int, k: int, arm: str, metrics: dict) -> dict:
    """One CSV/results row: every scalar metric of an arm plus training and short-unit counts."""
    row: dict[str, Any] = {"seed": seed, "k": k, "arm": arm}
    for key, value in metrics.items():
        if key in LEADING_COLUMNS:
            continue
        if value is None or isinstance(value, (int, float, str, bool)):
            row[key] = value
    short = metrics.get("short_units") or {}
    row["short_units"] = len(short.get("unit_ids", []))
    row["short_units_policy"] = short.get("policy")
    training = metrics.get("training") or {}
    row["train_windows"] = training.get("train_windows")
    row["epochs"] = training.get("epochs")
    return row


def write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(LEADING_COLUMNS)
    for row in rows:
        columns += [c for c in row if c not in columns]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    tmp.replace(path)


def summarise(rows: list[dict], arms: list[str], metric: str, reference: float | None) -> dict:
    """summary (per K and arm), gain and label reduction from the raw rows."""
    out: dict[str, Any] = {"summary": curves.aggregate(rows, SUMMARY_METRICS)}
    # The same numbers keyed for flattening (summarize.py: `by_k.k5.transfer.accuracy_pooled_mean`).
    out["by_k"] = {}
    for entry in out["summary"]:
        cell = {key: value for key, value in entry.items() if key not in ("k", "arm")}
        out["by_k"].setdefault(f"k{entry['k']}", {})[entry["arm"]] = cell
    if "transfer" in arms and "scratch" in arms:
        out["gain"] = {m: curves.paired_gain(rows, m) for m in ("accuracy_pooled", "accuracy_mean")}
        for m, gains in out["gain"].items():
            for g in gains:
                out["by_k"][f"k{g['k']}"][f"gain_{m}"] = {"mean": g["mean"], "std": g["std"], "n": g["n"]}
        ks, transfer, _ = curves.curve(out["summary"], "transfer", metric)
        _, scratch, _ = curves.curve(out["summary"], "scratch", metric)
        ks_list = [int(k) for k in ks]
        reductions = curves.label_reduction(ks_list, transfer.tolist(), scratch.tolist())
        for entry, k in zip(reductions, [k for k, v in zip(ks_list, transfer) if v == v]):
            entry["at_k"] = k
        out["label_reduction"] = {
            "metric": metric,
            "levels": reductions,
            "headline": curves.reduction_headline(reductions),
        }
        if reference is not None:
            out["label_reduction"]["reference"] = curves.reduction_at(
                ks_list, transfer.tolist(), scratch.tolist(), float(reference)
            )
    return out


def summary_table(results: dict, metric: str) -> str:
    """Text table: per K, mean ± std of `metric` for each arm and the paired gain."""
    summary = results["summary"]
    arms = [a for a in ARMS if any(r["arm"] == a for r in summary)]
    gains = {g["k"]: g for g in results.get("gain", {}).get(metric, [])}
    header = f"{'K':>4} " + " ".join(f"{a:>17}" for a in arms) + (f" {'gain':>17}" if gains else "")
    lines = [f"{metric}: mean ± std over seeds", header, "-" * len(header)]
    for k in sorted({r["k"] for r in summary}):
        cells = []
        for arm in arms:
            row = next((r for r in summary if r["k"] == k and r["arm"] == arm), None)
            mean = None if row is None else row.get(f"{metric}_mean")
            std = None if row is None else row.get(f"{metric}_std")
            cells.append(f"{mean:>8.3f} ± {std:<6.3f}" if mean is not None else f"{'-':>17}")
        if gains:
            g = gains.get(k)
            cells.append(f"{g['mean']:>+8.3f} ± {g['std']:<6.3f}" if g and g["mean"] is not None else f"{'-':>17}")
        lines.append(f"{k:>4} " + " ".join(cells))
    reduction = results.get("label_reduction")
    if reduction:
        lines.append(f"label reduction ({reduction['metric']}): {reduction['headline']['text']}")
        ref = reduction.get("reference")
        if ref:
            lines.append(f"  at the reference accuracy {ref['level']:.3f}: {_reduction_text(ref)}")
    return "\n".join(lines)


def _reduction_text(entry: dict) -> str:
    if entry["transfer_status"] == "never":
        return "transfer never reaches it"
    if entry["scratch_status"] == "never":
        bound = entry.get("ratio_lower_bound")
        return "scratch never reaches it" + (f" (> {bound:.1f}x)" if bound else "")
    if entry["ratio"] is None:
        return "both reach it at the smallest K (undetermined)"
    prefix = {"exact": "", "upper": "<= ", "lower": ">= "}[entry["bound"]]
    return (f"{prefix}{entry['ratio']:.2f}x (K_scratch {entry['k_scratch']:.1f} / "
            f"K_transfer {entry['k_transfer']:.1f})")


# ----------------------------------------------------------------------------------------------
# Figures (from a results.json dict; used by the entry point and the notebooks)


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def _k_axis(ax, ks) -> None:
    ax.set_xscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(int(k)) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("labelled spikes per unit (K)")


def plot_curves(results: dict, path: str | Path | None = None, metrics=("accuracy_pooled", "accuracy_mean")):
    """Accuracy vs K (log axis), mean ± std over seeds, one line per arm; one panel per metric."""
    plt = _pyplot()
    summary = results["summary"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for arm in ARMS:
            ks, mean, std = curves.curve(summary, arm, metric)
            if ks.size == 0:
                continue
            color, marker = ARM_STYLE[arm]
            ax.errorbar(ks, mean, yerr=std, color=color, marker=marker, capsize=3, label=arm)
            _k_axis(ax, ks)
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
    seeds = results.get("seeds")
    fig.suptitle(f"Label efficiency ({len(seeds) if seeds else '?'} seeds, mean ± std)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_gain(results: dict, path: str | Path | None = None, metric: str | None = None):
    """Bars: accuracy gain of transfer over scratch at each K (paired by seed, ± std)."""
    plt = _pyplot()
    metric = metric or results.get("metric", "accuracy_pooled")
    gains = results.get("gain", {}).get(metric, [])
    fig, ax = plt.subplots(figsize=(6, 4))
    positions = list(range(len(gains)))
    means = [g["mean"] if g["mean"] is not None else 0.0 for g in gains]
    stds = [g["std"] if g["std"] is not None else 0.0 for g in gains]
    colors = ["tab:green" if m >= 0 else "tab:red" for m in means]
    bars = ax.bar(positions, means, yerr=stds, capsize=3, color=colors)
    ax.set_xticks(positions)
    ax.set_xticklabels([str(g["k"]) for g in gains])
    for bar, m, sd, g in zip(bars, means, stds, gains):
        end = m + sd if m >= 0 else m - sd  # above the error bar
        text = "n/a" if g["mean"] is None else f"{100 * m:+.1f} pts"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, end), ha="center",
                    va="bottom" if m >= 0 else "top", fontsize=8, xytext=(0, 3 if m >= 0 else -3),
                    textcoords="offset points")
    low, high = ax.get_ylim()
    ax.set_ylim(low * 1.15, high * 1.15)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("labelled spikes per unit (K)")
    ax.set_ylabel(f"transfer - scratch ({metric.replace('_', ' ')})")
    ax.set_title("Accuracy gain of transfer learning")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_reduction(results: dict, path: str | Path | None = None):
    """Bars: K_scratch / K_transfer at each accuracy level transfer reaches (hatched: scratch
    never reaches the level within the largest K; the bar is the lower bound)."""
    plt = _pyplot()
    reduction = results.get("label_reduction") or {"levels": [], "headline": {"text": "no transfer/scratch pair"}}
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, entry in enumerate(reduction["levels"]):
        label = f"K={entry.get('at_k', '?')}\n{entry['level']:.3f}"
        if entry["ratio"] is not None:
            bar = ax.bar(i, entry["ratio"], color="tab:blue" if entry["bound"] == "exact" else "tab:gray")
            mark = {"exact": "", "upper": "≤", "lower": "≥"}[entry["bound"]]
            text = f"{mark}{entry['ratio']:.1f}×"
        elif entry["scratch_status"] == "never" and entry.get("ratio_lower_bound"):
            bar = ax.bar(i, entry["ratio_lower_bound"], color="white", edgecolor="tab:red", hatch="//")
            text = f">{entry['ratio_lower_bound']:.1f}×\nnever"
        else:
            bar = ax.bar(i, 0.0)
            text = "n/a"
        top = bar[0].get_height()
        ax.annotate(text, (i, top), ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
        ax.text(i, -0.02, label, transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=8)
    ax.set_xticks([])
    ax.set_ylim(0, max(ax.get_ylim()[1], 1.0) * 1.2)  # room for the annotations
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_ylabel("K_scratch / K_transfer")
    ax.set_xlabel(f"\n\naccuracy level reached by transfer at K ({reduction.get('metric', '')})")
    headline = textwrap.fill("Label reduction: " + reduction["headline"]["text"], 100)
    ax.set_title(headline, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def write_figures(run, results: dict) -> dict:
    """The three PNGs into the run folder, each logged as an image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = {}
    figures = [("label_efficiency", plot_curves)]
    if "gain" in results:
        figures += [("accuracy_gain", plot_gain), ("label_reduction", plot_reduction)]
    for name, plot in figures:
        path = run.dir / f"{name}.png"
        fig = plot(results, path)
        plt.close(fig)
        run.logger.image(name, path)
        written[name] = str(path)
    return written


# ----------------------------------------------------------------------------------------------
# The entry point


@hydra.main(version_base=None, config_path="../conf", config_name="label_efficiency")
def main(cfg: DictConfig) -> dict:
    with Run(cfg, "label_efficiency") as run:
        # Every config is typed and validated before any work.
        ks = sorted(_int_list(cfg, "ks", 1))
        seeds = _int_list(cfg, "seeds", 0)
        arms = list(cfg.arms)
        if not arms or any(a not in ARMS for a in arms) or len(set(arms)) != len(arms):
            raise ConfigError(f"arms: must be a non-empty subset of {list(ARMS)}; got {arms}")
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
                    write_csv(csv_path, rows)  # a killed run keeps what it finished
                    value = metrics.get(metric)
                    print(f"[label_efficiency] seed {seed} K {k} {arm}: {metric} "
                          f"{'-' if value is None else f'{value:.3f}'}", flush=True)

        run.results.update(summarise(rows, arms, metric, reference))
        if "label_reduction" in run.results:
            run.results["label_reduction_ratio"] = run.results["label_reduction"]["headline"]["ratio"]
        run.results["csv"] = str(csv_path)
        run.results["figures"] = write_figures(run, run.results)
        columns = list(LEADING_COLUMNS) + [c for c in SUMMARY_METRICS] + ["short_units"]
        run.logger.table("label_efficiency", columns, [[r.get(c) for c in columns] for r in rows])
        summary_columns = ["k", "arm", "n_seeds"] + [f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "std")]
        run.logger.table("label_efficiency_summary", summary_columns,
                         [[r.get(c) for c in summary_columns] for r in run.results["summary"]])
        table = summary_table(run.results, metric)
        run.results["table"] = table
        print()
        print(f"Label efficiency on the target's held-out half: K in {ks}, seeds {seeds}, "
              f"tolerance {configs[seeds[0]][1].evaluation.tolerance_ms} ms, short units: {ft_windows.short_units}")
        print(table)
    return run.results


if __name__ == "__main__":
    prepare_process()
    main()
