"""Whole-pipeline time of the real-data workflow and the recording length where it pays off.

    labeller = fit_linear([(60, 310.0), (180, 820.0)])          # a sorter's wall s vs data s
    esort = PipelineTimes(labeller=labeller, train_span_s=30, pretrain_s=0, finetune_s=60,
                          threshold_s=4, sort_s_per_s=0.3)
    esort.total(600), labeller.at(600), break_even_s(esort)     # s, s, the length where equal

A user who sorts a recording of L seconds with a conventional sorter waits T_l(L) = b + a L
(`Linear`: a fixed start-up cost b and a cost a per second of data, fitted to measured runs).
With E-Sort (the workflow of esort_jax.realdata.workflow) they wait for the labeller on the
first L_t seconds, the backbone (pretraining, or 0 on a cache hit or a shipped backbone),
fine-tuning, the threshold sweep, and E-Sort sorting the rest from the raw file (reading and
preprocessing included) at s seconds per second of data:

    T_e(L) = T_l(L_t) + pretrain + finetune + threshold + s (L - L_t)          (L >= L_t)

so T_e(L) < T_l(L) exactly when L > L* = L_t + (pretrain + finetune + threshold) / (a - s),
and never when a <= s. Every term is measured (benchmarks/pipeline_time.py); only the lines
between and beyond the measured lengths are extrapolated, and the benchmark checks them against
lengths it measures too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["Linear", "fit_linear", "PipelineTimes", "break_even_s", "plot_break_even"]


@dataclasses.dataclass(frozen=True)
class Linear:
    """Wall seconds b + a L for L seconds of data."""

    intercept_s: float
    slope: float

    def at(self, length_s) -> np.ndarray:
        return self.intercept_s + self.slope * np.asarray(length_s, dtype=np.float64)


def fit_linear(points: Sequence[tuple[float, float]]) -> Linear:
    """Least squares through (data seconds, wall seconds) points; one point: through the origin
    (no start-up cost can be told apart from a single run)."""
    lengths, seconds = (np.asarray(v, dtype=np.float64) for v in zip(*points))
    if lengths.size == 1 or np.ptp(lengths) == 0:
        return Linear(0.0, float(seconds.mean() / lengths.mean()))
    slope, intercept = np.polyfit(lengths, seconds, 1)
    return Linear(float(intercept), float(slope))


@dataclasses.dataclass(frozen=True)
class PipelineTimes:
    """The measured parts of labeller + E-Sort (module doc), all wall seconds."""

    labeller: Linear
    train_span_s: float
    pretrain_s: float
    finetune_s: float
    threshold_s: float
    sort_s_per_s: float

    @property
    def fixed_s(self) -> float:
        """What E-Sort adds once: backbone, fine-tuning, threshold."""
        return self.pretrain_s + self.finetune_s + self.threshold_s

    def total(self, length_s) -> np.ndarray:
        """T_e(L) for L >= the training span."""
        length = np.maximum(np.asarray(length_s, dtype=np.float64), self.train_span_s)
        return (self.labeller.at(self.train_span_s) + self.fixed_s
                + self.sort_s_per_s * (length - self.train_span_s))


def break_even_s(times: PipelineTimes) -> float | None:
    """L* where labeller + E-Sort takes as long as the labeller alone (None: never, because the
    labeller is not slower per second of data than E-Sort's sorting)."""
    gain = times.labeller.slope - times.sort_s_per_s
    if gain <= 0:
        return None
    return times.train_span_s + times.fixed_s / gain


def plot_break_even(curves: dict[str, PipelineTimes], path: str | Path | None = None,
                    measured: Sequence[dict] = (), max_length_s: float = 3600.0):
    """Wall time against recording length (log-log): per labeller, the labeller alone (dashed)
    and labeller + E-Sort (solid), the break-even length marked; `measured` points ({'method',
    'length_s', 'seconds'}) drawn on top to check the lines."""
    from esort_jax.report.plots import _figure, _finish

    fig = _figure(path, (7, 5))
    ax = fig.subplots()
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for (name, times), colour in zip(curves.items(), colours):
        length = np.geomspace(times.train_span_s, max_length_s, 200)
        ax.plot(length, times.labeller.at(length), ls="--", color=colour, label=f"{name} alone")
        ax.plot(length, times.total(length), color=colour, label=f"{name} on {times.train_span_s:g} s + E-Sort")
        star = break_even_s(times)
        if star is not None and star <= max_length_s:
            ax.plot([star], [times.total(star)], marker="*", ms=12, color=colour)
            ax.annotate(f"{star / 60:.1f} min", (star, times.total(star)), xytext=(4, -12),
                        textcoords="offset points", fontsize=8, color=colour)
    for point in measured:  # 'o' the labeller alone, 'x' labeller + E-Sort (a point's `marker`)
        ax.plot([point["length_s"]], [point["seconds"]], marker=point.get("marker", "o"), mfc="none", color="k",
                ls="none")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("recording length (s)")
    ax.set_ylabel("wall time until sorted (s)")
    ax.set_title("Labeller alone vs labeller on the first span + E-Sort (measured: ○ alone, × with E-Sort)",
                 fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _finish(fig, path)
