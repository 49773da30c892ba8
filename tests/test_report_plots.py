"""Figures (esort_jax.report.plots) from fabricated results: each is written as a PNG of the
expected size that matplotlib reads back, saving leaves no pyplot figure open, and each figure
shows one mark per data point."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from esort_jax.report import comparison  # noqa: E402
from esort_jax.report.curves import summarise  # noqa: E402
from esort_jax.report.plots import (  # noqa: E402
    DPI,
    label_efficiency_figures,
    plot_accuracy_gain,
    plot_comparison,
    plot_heatmap,
    plot_label_efficiency,
    plot_label_reduction,
)
from esort_jax.report.results import Pivot  # noqa: E402
from tests._comparison import fake_rows  # noqa: E402

KS = (1, 2, 5, 10)


def _efficiency_results(arms=("transfer", "scratch")):
    rows = []
    for seed in (0, 1, 2):
        for k, t, s in zip(KS, (0.5, 0.6, 0.7, 0.8), (0.2, 0.5, 0.6, 0.7)):
            for arm, value in (("transfer", t), ("scratch", s)):
                if arm in arms:
                    rows.append({"seed": seed, "k": k, "arm": arm, "accuracy_pooled": value + 0.01 * seed,
                                 "accuracy_mean": value - 0.02 * seed})
    return {"seeds": [0, 1, 2], "metric": "accuracy_pooled",
            **summarise(rows, list(arms), "accuracy_pooled", reference=None)}


def _comparison_results():
    def esort(arm, k, acc):
        return comparison.method_row(f"{arm} K={k}", "esort", {
            "accuracy_pooled": acc, "accuracy_mean": acc - 0.05, "sort_seconds": 2.0, "sorted_duration_s": 15.0,
            "train_seconds": 30.0, "well_detected": 40, "n_units": 51}, arm=arm, k=k)
    rows = [
        comparison.method_row("kilosort4", "sorter", {"accuracy_pooled": 0.8, "sort_seconds": 300.0,
                                                      "sorted_duration_s": 15.0, "n_units": 51, "well_detected": 38}),
        comparison.method_row("spykingcircus2", "sorter", {"status": "failed", "error": "boom"}),
        esort("transfer", 5, 0.7), esort("transfer", 10, 0.85), esort("scratch", 5, 0.5),
    ]
    return {"rows": rows, "target": {"num_channels": 64, "num_units": 51}, "spans": {"span": "eval"}}


def _check_png(path, figsize):
    """A PNG of figsize x DPI pixels that is not blank; returns the image."""
    assert path.stat().st_size > 10_000
    image = matplotlib.image.imread(path)
    assert image.shape == (round(figsize[1] * DPI), round(figsize[0] * DPI), 4)
    assert image[..., :3].std() > 0.05
    return image


@pytest.fixture
def no_open_figures():
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before, "saving a figure must leave no pyplot figure open"


def test_label_efficiency_curves(tmp_path, no_open_figures):
    fig = plot_label_efficiency(_efficiency_results(), tmp_path / "le.png")
    _check_png(tmp_path / "le.png", (10, 4))
    assert len(fig.axes) == 2 and fig.axes[0].get_xscale() == "log"
    # one error-bar line per arm, through the mean over seeds at each K
    bars = fig.axes[0].containers
    assert [c.get_label() for c in bars] == ["transfer", "scratch"]
    np.testing.assert_allclose(bars[0].lines[0].get_ydata(), [0.51, 0.61, 0.71, 0.81])
    np.testing.assert_allclose(bars[1].lines[0].get_xdata(), KS)
    assert "3 seeds" in fig._suptitle.get_text()


def test_accuracy_gain_bars(tmp_path, no_open_figures):
    fig = plot_accuracy_gain(_efficiency_results(), tmp_path / "gain.png")
    _check_png(tmp_path / "gain.png", (6, 4))
    heights = [p.get_height() for p in fig.axes[0].patches]
    np.testing.assert_allclose(heights, [0.3, 0.1, 0.1, 0.1])
    assert [t.get_text() for t in fig.axes[0].texts] == ["+30.0 pts", "+10.0 pts", "+10.0 pts", "+10.0 pts"]


def test_label_reduction_bars(tmp_path, no_open_figures):
    results = _efficiency_results()
    fig = plot_label_reduction(results, tmp_path / "reduction.png")
    _check_png(tmp_path / "reduction.png", (7, 4))
    levels = results["label_reduction"]["levels"]
    assert len(fig.axes[0].patches) == len(levels) == len(KS)
    assert fig.axes[0].patches[1].get_height() == pytest.approx(levels[1]["ratio"])  # 0.61 at K=2


def test_label_efficiency_figures_into_a_folder(tmp_path, no_open_figures):
    written = label_efficiency_figures(_efficiency_results(), tmp_path)
    assert written == {name: str(tmp_path / f"{name}.png")
                       for name in ("label_efficiency", "accuracy_gain", "label_reduction")}
    _check_png(tmp_path / "accuracy_gain.png", (6, 4))
    one_arm = tmp_path / "one"
    one_arm.mkdir()
    assert list(label_efficiency_figures(_efficiency_results(arms=("scratch",)), one_arm)) == ["label_efficiency"]


def test_heatmap_writes_every_value(tmp_path, no_open_figures):
    grid = Pivot("source", "target", "transfer.accuracy_pooled", ["none", "slow", "fast"], ["none", "slow"],
                 [[0.9, 0.7], [0.8, math.nan], [0.6, 0.4]], [[1, 1], [1, 0], [1, 1]])
    fig = plot_heatmap(grid, tmp_path / "grid.png", title="grid", cmap="RdBu", center=0.5)
    _check_png(tmp_path / "grid.png", (1.6 + 1.3 * 2, 1.2 + 0.8 * 3))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["0.900", "0.700", "0.800", "–", "0.600", "0.400"]
    assert fig.axes[0].images[0].norm.vmin == pytest.approx(0.1) and fig.axes[0].images[0].norm.vmax == pytest.approx(0.9)


def test_comparison_panels(tmp_path, no_open_figures):
    fig = plot_comparison(_comparison_results(), tmp_path / "comparison.png")
    _check_png(tmp_path / "comparison.png", (17, 4.8))
    scatter, accuracy, well = fig.axes[:3]
    assert scatter.get_xscale() == "log"
    offsets = np.concatenate([c.get_offsets() for c in scatter.collections if len(c.get_offsets())])
    assert len(offsets) == 1 + 2 * 3  # the sorter that ran, and each E-Sort row with and without fine-tuning
    assert [t.get_text() for t in accuracy.get_xticklabels()] == ["kilosort4", "transfer K=5", "transfer K=10",
                                                                 "scratch K=5"]
    assert [p.get_height() for p in well.patches] == [38, 40, 40, 40]


def test_comparison_scatter_has_a_point_per_method_that_ran(tmp_path, no_open_figures):
    rows = comparison.ordered_rows(fake_rows())
    fig = plot_comparison({"rows": rows, "target": {"num_channels": 64, "num_units": 51}, "spans": {"span": "eval"}},
                          tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 10_000
    scatter = fig.axes[0]
    assert scatter.get_xscale() == "log"
    # one point per successful method, plus a hollow fine-tune + sort point per E-Sort row
    offsets = np.concatenate([c.get_offsets() for c in scatter.collections if len(c.get_offsets())])
    assert len(offsets) == 2 + 2 * 6


def test_without_a_path_the_figure_is_shown_through_pyplot():
    fig = plot_label_efficiency(_efficiency_results(), metrics=("accuracy_mean",))
    try:
        assert fig.number in plt.get_fignums() and len(fig.axes) == 1
    finally:
        plt.close(fig)
