"""The text-table writer (esort_jax.report.tables) and the tables written with it."""

import math

import numpy as np
import pytest

from esort_jax.evaluate import evaluate
from esort_jax.recording import Sorting
from esort_jax.report.curves import summarise
from esort_jax.report.results import Pivot
from esort_jax.report.tables import (
    Column,
    arms_table,
    evaluation_table,
    format_pivot,
    label_efficiency_table,
    scores_table,
    table_lines,
)

FS = 32000.0


def test_table_lines_align_format_and_mark_missing_values():
    columns = [Column("name", "name", 6, align="<"), Column("x", "x_value", 8, ".2f"), Column("n", "n", 3, "d")]
    rows = [{"name": "a", "x": 1.234, "n": np.int64(7)}, {"name": "bb", "x": float("nan")},
            {"name": "c", "x": np.float32(float("inf")), "n": None}, "free text line", {"x": np.float32(0.5), "n": 12345}]
    assert table_lines(columns, rows) == [
        f"{'name':<6} {'x_value':>8} {'n':>3}",
        "-" * 19,
        f"{'a':<6} {'1.23':>8} {'7':>3}",
        f"{'bb':<6} {'-':>8} {'-':>3}",
        f"{'c':<6} {'-':>8} {'-':>3}",
        "free text line",
        f"{'-':<6} {'0.50':>8} 12345",  # a missing name; a value wider than its column is not cut
    ]


def test_a_column_formats_its_cells():
    assert Column("k", "K", 4).cell(10) == "  10"
    assert Column("a", "arm", 9, align="<").cell("transfer") == "transfer "
    assert Column("g", "gain", 8, "+.3f").cell(-0.25) == "  -0.250"
    assert Column("g", "gain", 3).cell(None) == "  -"


def _arm(arm, acc, **extra):
    return {"arm": arm, "accuracy_pooled": acc, "accuracy_mean": acc - 0.1, "accuracy_median": acc - 0.05,
            "precision_pooled": 0.95, "recall_pooled": 0.9, "well_detected": 12, "n_units": 15, "sort_seconds": 1.234, **extra}


def test_arms_table_is_the_demo_table():
    results = {"transfer": _arm("transfer", 0.91234), "scratch": _arm("scratch", 0.5, well_detected=None)}
    assert arms_table(results, ["transfer", "scratch"]) == "\n".join([
        "arm       acc_pool acc_mean  acc_med     prec   recall   well  units   sort_s",
        "-----------------------------------------------------------------------------",
        "transfer     0.912    0.812    0.862    0.950    0.900     12     15     1.23",
        "scratch      0.500    0.400    0.450    0.950    0.900      -     15     1.23",
    ])
    assert arms_table(results, ["scratch"]).splitlines()[2].startswith("scratch ")


def test_scores_table_names_each_line():
    scores = {"accuracy_pooled": 0.7, "accuracy_mean": 0.65, "accuracy_median": 0.66, "precision_pooled": 0.8,
              "recall_pooled": 0.77, "well_detected": 7, "n_units": 20, "per_unit": {"accuracy": [0.5]}}
    lines = scores_table([("agreement with labels", scores), ("E-Sort vs ground truth", scores)]).splitlines()
    assert lines[0] == " " * 24 + " acc_pool acc_mean  acc_med     prec   recall  well  units"
    assert lines[2] == "agreement with labels       0.700    0.650    0.660    0.800    0.770     7     20"
    assert lines[3].split()[-7:] == ["0.700", "0.650", "0.660", "0.800", "0.770", "7", "20"]
    assert len(lines) == 4 and set(lines[1]) == {"-"} and len(lines[1]) == len(lines[0])


def _efficiency_results():
    rows = []
    for seed in (0, 1):
        for k, t, s in ((1, 0.5, 0.2), (5, 0.7, 0.5), (10, 0.8, 0.7)):
            rows.append({"seed": seed, "k": k, "arm": "transfer", "accuracy_pooled": t + 0.02 * seed})
            rows.append({"seed": seed, "k": k, "arm": "scratch", "accuracy_pooled": s})
    return summarise(rows, ["transfer", "scratch"], "accuracy_pooled", reference=0.6)


def test_label_efficiency_table_has_mean_std_per_arm_the_gain_and_the_reduction():
    results = _efficiency_results()
    lines = label_efficiency_table(results, "accuracy_pooled").splitlines()
    assert lines[0] == "accuracy_pooled: mean ± std over seeds"
    assert lines[1] == f"{'K':>4} {'transfer':>17} {'scratch':>17} {'gain':>17}"
    assert lines[3] == "   1    0.510 ± 0.014     0.200 ± 0.000    +0.310 ± 0.014 "
    assert [line.split()[0] for line in lines[3:6]] == ["1", "5", "10"]
    assert lines[6] == f"label reduction (accuracy_pooled): {results['label_reduction']['headline']['text']}"
    assert lines[7].startswith("  at the reference accuracy 0.600: ") and lines[7].endswith(")")


def test_label_efficiency_table_with_one_arm_and_a_missing_value():
    results = _efficiency_results()
    del results["gain"], results["label_reduction"]
    results["summary"] = [r for r in results["summary"] if r["arm"] == "scratch"]
    results["summary"][0]["accuracy_pooled_mean"] = None
    lines = label_efficiency_table(results, "accuracy_pooled").splitlines()
    assert lines[1].split() == ["K", "scratch"] and len(lines) == 6
    assert lines[3] == f"   1 {'-':>17}"


def test_format_pivot_single_jobs_and_empty_cells():
    grid = Pivot("source", "target", "transfer.accuracy_pooled", ["none", "fast"], ["none", "slow"],
                 [[0.9, 0.75], [math.nan, 0.5]], [[1, 1], [0, 1]])
    corner = "source \\ target"  # 15 wide; cells as wide as precision + 4
    assert format_pivot(grid, precision=2) == "\n".join([
        "transfer.accuracy_pooled",
        f"{corner} {'none':>6} {'slow':>6}",
        "-" * 29,
        f"{'none':<15} {'0.90':>6} {'0.75':>6}",
        f"{'fast':<15} {'-':>6} {'0.50':>6}",
    ])
    single = Pivot("k", None, "m", [5, 10], ["m"], [[0.5], [0.75]], [[2], [3]])
    assert format_pivot(single).splitlines() == [
        "m (mean over jobs per cell)", f"k  {'m':>12}", "-" * 15, f"5  {'0.500 n=2':>12}", f"10 {'0.750 n=3':>12}",
    ]


def test_evaluation_table_per_unit_and_pooled():
    truth = Sorting.from_unit_dict({0: [100, 200, 300, 400], 1: [1000, 2000]}, FS)
    predicted = Sorting.from_unit_dict({0: [101, 199, 300, 5000]}, FS)
    lines = evaluation_table(evaluate(predicted, truth)).splitlines()
    assert lines[0].split() == ["unit", "pred", "num_gt", "num_pred", "tp", "fp", "fn", "acc", "prec", "rec"]
    assert len(lines) == truth.num_units + 6 and lines[-4] == lines[1]
    assert lines[2].split() == ["0", "0", "4", "4", "3", "1", "1", "0.600", "0.750", "0.750"]
    assert lines[3].split() == ["1", "-", "2", "0", "0", "0", "2", "0.000", "0.000", "0.000"]
    assert lines[-3] == "pooled: accuracy 0.4286  precision 0.7500  recall 0.5000  (TP 3, FP 1, FN 3)"
    assert lines[-1] == "tolerance 0.4 ms = 12 samples; identities known"
    renamed = Sorting.from_unit_dict({7: [101, 199, 300, 5000], 8: [9000]}, FS)
    spanned = evaluation_table(evaluate(renamed, truth, identities="unknown", span=(0, 10000))).splitlines()
    assert spanned[2].split()[:2] == ["0", "7"]
    assert spanned[-1] == "tolerance 0.4 ms = 12 samples; identities unknown; span [0, 10000)"
    assert spanned[-3].endswith("(TP 3, FP 2, FN 3, incl. 1 FP from 1 unpaired predicted units)")


@pytest.mark.parametrize("value", [None, float("nan"), np.float64("inf")])
def test_missing_values_print_as_a_dash(value):
    assert Column("x", "x", 5, ".3f").cell(value) == "    -"
