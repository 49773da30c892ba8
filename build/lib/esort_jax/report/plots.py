"""Figures from loaded results: label-efficiency curves, gain and reduction, a sweep's heatmap,
the baselines comparison.

Each function takes what a run wrote (a results.json dict, or a `Pivot`) and an optional path
and returns the figure:

    plot_label_efficiency(json.loads(Path(run, "results.json").read_text()))   # shown (notebooks)
    plot_heatmap(pivot(rows, "source.data.drift.mode", None, "transfer.accuracy_pooled"), "grid.png")

With a path the figure is drawn outside pyplot on an Agg canvas and saved as a PNG: no backend
to set, nothing left open. Without one it is a pyplot figure, for `plt.show()`.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from esort_jax.report import curves
from esort_jax.report.results import Pivot

__all__ = [
    "plot_label_efficiency",
    "plot_accuracy_gain",
    "plot_label_reduction",
    "label_efficiency_figures",
    "plot_heatmap",
    "plot_comparison",
]

DPI = 120
ARM_STYLE = {"transfer": ("tab:blue", "o"), "scratch": ("tab:orange", "s")}  # colour, marker


def _figure(path: str | Path | None, figsize: tuple[float, float]):
    """A pyplot figure to show (path None), else a figure outside pyplot on an Agg canvas."""
    if path is None:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _finish(fig, path: str | Path | None):
    """Lay the figure out and save it to `path` (if any); returns the figure."""
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=DPI)
    return fig


# ----------------------------------------------------------------------------------------------
# Label efficiency (a label_efficiency run's results.json)


def _k_axis(ax, ks) -> None:
    ax.set_xscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(int(k)) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("labelled spikes per unit (K)")


def plot_label_efficiency(results: dict, path: str | Path | None = None,
                          metrics: Sequence[str] = ("accuracy_pooled", "accuracy_mean")):
    """Accuracy vs K (log axis), mean ± std over seeds, one line per arm; one panel per metric."""
    fig = _figure(path, (5 * len(metrics), 4))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for arm in curves.ARMS:
            ks, mean, std = curves.curve(results["summary"], arm, metric)
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
    return _finish(fig, path)


def plot_accuracy_gain(results: dict, path: str | Path | None = None, metric: str | None = None):
    """Bars: accuracy gain of transfer over scratch at each K (paired by seed, ± std)."""
    metric = metric or results.get("metric", "accuracy_pooled")
    gains = results.get("gain", {}).get(metric, [])
    fig = _figure(path, (6, 4))
    ax = fig.subplots()
    positions = list(range(len(gains)))
    means = [g["mean"] if g["mean"] is not None else 0.0 for g in gains]
    stds = [g["std"] if g["std"] is not None else 0.0 for g in gains]
    bars = ax.bar(positions, means, yerr=stds, capsize=3, color=["tab:green" if m >= 0 else "tab:red" for m in means])
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
    return _finish(fig, path)


def _reduction_bar(ax, i: int, entry: dict) -> None:
    """One level's bar: the ratio (blue exact, grey bounded), or hatched when scratch never
    reaches the level (the bar is the lower bound), annotated with its value and level."""
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
    label = f"K={entry.get('at_k', '?')}\n{entry['level']:.3f}"
    ax.text(i, -0.02, label, transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=8)


def plot_label_reduction(results: dict, path: str | Path | None = None):
    """Bars: K_scratch / K_transfer at each accuracy level transfer reaches (hatched: scratch
    never reaches the level within the largest K; the bar is the lower bound)."""
    reduction = results.get("label_reduction") or {"levels": [], "headline": {"text": "no transfer/scratch pair"}}
    fig = _figure(path, (7, 4))
    ax = fig.subplots()
    for i, entry in enumerate(reduction["levels"]):
        _reduction_bar(ax, i, entry)
    ax.set_xticks([])
    ax.set_ylim(0, max(ax.get_ylim()[1], 1.0) * 1.2)  # room for the annotations
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_ylabel("K_scratch / K_transfer")
    ax.set_xlabel(f"\n\naccuracy level reached by transfer at K ({reduction.get('metric', '')})")
    ax.set_title(textwrap.fill("Label reduction: " + reduction["headline"]["text"], 100), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _finish(fig, path)


def label_efficiency_figures(results: dict, folder: str | Path) -> dict[str, str]:
    """The PNGs of a label-efficiency run into `folder`: label_efficiency.png, and with both
    arms accuracy_gain.png and label_reduction.png. Returns {name: path}."""
    figures = [("label_efficiency", plot_label_efficiency)]
    if "gain" in results:
        figures += [("accuracy_gain", plot_accuracy_gain), ("label_reduction", plot_label_reduction)]
    written = {}
    for name, plot in figures:
        path = Path(folder) / f"{name}.png"
        plot(results, path)
        written[name] = str(path)
    return written


# ----------------------------------------------------------------------------------------------
# A sweep's grid (report.results.pivot)


def plot_heatmap(table: Pivot, path: str | Path | None = None, title: str | None = None, cmap: str = "viridis",
                 center: float | None = None):
    """Heatmap of the grid with each value written in its cell; returns the figure.

    `center`: a value at the middle of the colour scale (e.g. 0 for a gain, with cmap="RdBu")."""
    data = np.asarray(table.values, dtype=np.float64)
    fig = _figure(path, (1.6 + 1.3 * max(len(table.col_values), 1), 1.2 + 0.8 * max(len(table.row_values), 1)))
    ax = fig.subplots()
    finite = data[np.isfinite(data)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if center is not None:
        reach = max(abs(vmax - center), abs(vmin - center)) or 0.5
        vmin, vmax = center - reach, center + reach
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    fig.colorbar(image, ax=ax, label=table.metric)
    ax.set_xticks(range(len(table.col_values)))
    ax.set_xticklabels([str(c) for c in table.col_values])
    ax.set_yticks(range(len(table.row_values)))
    ax.set_yticklabels([str(r) for r in table.row_values])
    ax.set_xlabel(table.col_key or "")
    ax.set_ylabel(table.row_key)
    for (i, j), v in np.ndenumerate(data):
        if not np.isfinite(v):
            ax.text(j, i, "–", ha="center", va="center", color="gray", fontsize=9)
            continue
        r, g, b, _ = image.cmap(image.norm(v))
        color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"  # readable on the cell
        ax.text(j, i, f"{v:.3f}", ha="center", va="center", color=color, fontsize=9)
    ax.set_title(title or table.metric, fontsize=10)
    return _finish(fig, path)


# ----------------------------------------------------------------------------------------------
# Sorters beside E-Sort (a baselines run's results.json: its `rows`, see report.comparison)


def _time_panel(ax, rows: list[dict]) -> None:
    """Accuracy (pooled) against sort seconds per second of data; E-Sort hollow with fine-tuning."""
    sorter_colors = iter(["tab:red", "tab:green", "tab:purple", "tab:brown", "tab:gray"])
    for row in rows:
        duration = row.get("sorted_duration_s") or float("nan")
        seconds = (row.get("sort_seconds") or float("nan")) / duration
        if row["kind"] == "sorter":
            ax.scatter(seconds, row["accuracy_pooled"], marker="D", s=60, color=next(sorter_colors),
                       label=row["method"], zorder=3)
            continue
        color, marker = ARM_STYLE[row["arm"]]
        ax.scatter(seconds, row["accuracy_pooled"], marker=marker, color=color, zorder=3)
        ax.annotate(f"K={row['k']}", (seconds, row["accuracy_pooled"]), fontsize=7,
                    xytext=(4, -3), textcoords="offset points")
        if row.get("train_seconds"):
            total = (row["sort_seconds"] + row["train_seconds"]) / duration
            ax.scatter(total, row["accuracy_pooled"], marker=marker, facecolor="none", edgecolor=color, zorder=3)
    for arm, (color, marker) in ARM_STYLE.items():
        if any(r["kind"] == "esort" and r["arm"] == arm for r in rows):
            ax.scatter([], [], marker=marker, color=color, label=f"E-Sort {arm} (sort)")
            ax.scatter([], [], marker=marker, facecolor="none", edgecolor=color,
                       label=f"E-Sort {arm} (fine-tune + sort)")
    ax.set_xscale("log")
    ax.set_xlabel("wall seconds per second of data (log)")
    ax.set_ylabel("accuracy (pooled)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Accuracy against sorting time", fontsize=10)


def _method_axis(ax, rows: list[dict], title: str) -> None:
    ax.set_xticks(np.arange(len(rows)))
    ax.set_xticklabels([r["method"] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)


def _accuracy_panel(ax, rows: list[dict]) -> None:
    """Pooled and per-unit mean accuracy per method."""
    positions, width = np.arange(len(rows)), 0.38
    pooled = [r.get("accuracy_pooled") or 0.0 for r in rows]
    mean = [r.get("accuracy_mean") or 0.0 for r in rows]
    ax.bar(positions - width / 2, pooled, width, label="pooled", color="tab:blue")
    ax.bar(positions + width / 2, mean, width, label="per-unit mean", color="tab:cyan")
    for x, v in zip(positions, pooled):
        ax.annotate(f"{v:.2f}", (x - width / 2, v), ha="center", va="bottom", fontsize=6, xytext=(0, 1),
                    textcoords="offset points")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    _method_axis(ax, rows, "Accuracy on the held-out span")


def _well_detected_panel(ax, rows: list[dict]) -> None:
    """Well-detected units per method against the number of true units."""
    ax.bar(np.arange(len(rows)), [r.get("well_detected") or 0 for r in rows], color="tab:green")
    units = max((r.get("n_units") or 0 for r in rows), default=0)
    if units:
        ax.axhline(units, color="k", lw=0.8, ls="--", label=f"{units} true units")
        ax.legend(fontsize=7)
    ax.set_ylabel("units with accuracy >= 0.8")
    _method_axis(ax, rows, "Well-detected units")


def plot_comparison(results: dict, path: str | Path | None = None):
    """Three panels: accuracy (pooled) against sort time per second of data (log axis; E-Sort
    also with its fine-tuning time, hollow); pooled and mean accuracy per method; well-detected
    units per method against the number of true units."""
    rows = [r for r in results["rows"] if r.get("status", "ok") == "ok"]
    fig = _figure(path, (17, 4.8))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.2, 1, 1]})
    _time_panel(axes[0], rows)
    _accuracy_panel(axes[1], rows)
    _well_detected_panel(axes[2], rows)
    target = results.get("target", {})
    fig.suptitle(
        f"{target.get('num_channels', '?')} channels, {target.get('num_units', '?')} units; "
        f"sorters on span '{results.get('spans', {}).get('span', '?')}', all scored on the held-out span",
        fontsize=10,
    )
    return _finish(fig, path)
