"""Label-efficiency curve math: aggregation, log-K interpolation, label reduction; a run's rows
and their summary."""

import math

import numpy as np
import pytest

from esort_jax.report.curves import (
    aggregate,
    curve,
    k_to_reach,
    label_reduction,
    mean_std,
    paired_gain,
    reduction_at,
    reduction_headline,
    result_row,
    summarise,
)


def test_mean_std_uses_sample_std_and_skips_missing():
    assert mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert mean_std([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1}
    assert mean_std([None, float("nan"), 4.0, 6.0])["n"] == 2
    assert mean_std([None]) == {"mean": None, "std": None, "n": 0}


def _rows():
    rows = []
    for seed in (0, 1, 2):
        for k in (10, 1, 5):  # unsorted on purpose
            rows.append({"seed": seed, "k": k, "arm": "transfer", "acc": 0.5 + 0.03 * k + 0.01 * seed})
            rows.append({"seed": seed, "k": k, "arm": "scratch", "acc": 0.2 + 0.04 * k - 0.01 * seed})
    return rows


def test_aggregate_and_curve():
    summary = aggregate(_rows(), ["acc", "absent"])
    assert [(r["k"], r["arm"]) for r in summary][:2] == [(1, "scratch"), (1, "transfer")]
    assert all(r["n_seeds"] == 3 for r in summary)
    ks, mean, std = curve(summary, "transfer", "acc")
    np.testing.assert_array_equal(ks, [1, 5, 10])
    np.testing.assert_allclose(mean, [0.54, 0.66, 0.81])
    np.testing.assert_allclose(std, [0.01, 0.01, 0.01])
    _, absent, _ = curve(summary, "transfer", "absent")
    assert np.isnan(absent).all()


def test_paired_gain_pairs_by_seed():
    gains = paired_gain(_rows(), "acc")
    assert [g["k"] for g in gains] == [1, 5, 10]
    # transfer - scratch = 0.3 - 0.01 k + 0.02 seed -> mean over seeds 0.32 - 0.01 k, std 0.02
    for g in gains:
        assert g["mean"] == pytest.approx(0.32 - 0.01 * g["k"])
        assert g["std"] == pytest.approx(0.02)
        assert g["n"] == 3
    # an unpaired seed is left out
    rows = _rows() + [{"seed": 9, "k": 1, "arm": "transfer", "acc": 1.0}]
    assert paired_gain(rows, "acc")[0]["n"] == 3


def test_k_to_reach_interpolates_in_log_k():
    ks, values = [1, 10, 100], [0.2, 0.4, 0.8]
    reach = k_to_reach(ks, values, 0.3)
    assert reach.status == "interpolated"
    assert reach.k == pytest.approx(math.sqrt(10))  # halfway in log K between 1 and 10
    assert k_to_reach(ks, values, 0.6).k == pytest.approx(math.sqrt(1000))
    assert k_to_reach(ks, values, 0.4).status == "exact" and k_to_reach(ks, values, 0.4).k == 10
    first = k_to_reach(ks, values, 0.1)
    assert (first.k, first.status) == (1.0, "first")
    never = k_to_reach(ks, values, 0.9)
    assert (never.k, never.status) == (None, "never")


def test_k_to_reach_first_crossing_and_missing_points():
    # non-monotonic: the first crossing counts
    assert k_to_reach([1, 2, 4, 8], [0.1, 0.6, 0.3, 0.9], 0.5).k < 2
    # NaN points are skipped
    reach = k_to_reach([1, 2, 4], [0.2, float("nan"), 0.6], 0.4)
    assert reach.status == "interpolated" and reach.k == pytest.approx(2.0)
    with pytest.raises(ValueError, match="K must be > 0"):
        k_to_reach([0, 1], [0.1, 0.2], 0.15)


def test_label_reduction_ratio_and_censoring():
    ks = [1, 2, 5, 10, 20]
    transfer = [0.50, 0.60, 0.70, 0.80, 0.85]
    scratch = [0.20, 0.50, 0.60, 0.70, 0.75]
    reductions = label_reduction(ks, transfer, scratch)
    assert [r["level"] for r in reductions] == transfer
    # transfer's level at K=2 (0.60) is reached by scratch at K=5 exactly: 2.5x
    at2 = reductions[1]
    assert at2["k_transfer"] == 2 and at2["k_scratch"] == 5 and at2["ratio"] == pytest.approx(2.5)
    assert at2["bound"] == "exact"
    # transfer at K=1 (0.50) is transfer's smallest K: the ratio is a lower bound
    assert reductions[0]["bound"] == "lower" and reductions[0]["ratio"] == pytest.approx(2.0)
    # 0.80 and 0.85: scratch never gets there within K <= 20
    for r in reductions[3:]:
        assert r["scratch_status"] == "never" and r["ratio"] is None
        assert r["ratio_lower_bound"] == pytest.approx(20 / r["k_transfer"])
    headline = reduction_headline(reductions)
    assert headline["n_exact"] == 2 and headline["n_never"] == 2 and headline["n_bounded"] == 1
    assert headline["ratio"] == pytest.approx(math.sqrt(2.5 * 2.0))  # levels 0.6 (2.5x), 0.7 (10/5)
    assert "fewer labelled spikes" in headline["text"] and "never reaches 2 levels" in headline["text"]


def test_reduction_at_other_cases():
    ks = [1, 10]
    both_first = reduction_at(ks, [0.9, 0.95], [0.8, 0.9], 0.5)
    assert both_first["ratio"] is None and both_first["bound"] is None
    scratch_first = reduction_at(ks, [0.4, 0.9], [0.6, 0.7], 0.5)
    assert scratch_first["bound"] == "upper" and scratch_first["ratio"] < 1
    transfer_never = reduction_at(ks, [0.4, 0.45], [0.6, 0.7], 0.5)
    assert transfer_never["transfer_status"] == "never" and transfer_never["ratio"] is None
    assert reduction_headline([transfer_never])["ratio"] is None


def test_headline_when_scratch_is_better():
    reductions = label_reduction([1, 10, 100], [0.2, 0.4, 0.6], [0.3, 0.5, 0.7], levels=[0.45])
    assert reductions[0]["ratio"] < 1
    assert "more labelled spikes" in reduction_headline(reductions)["text"]


def test_result_row_keeps_scalars_and_counts_short_units():
    metrics = {"accuracy_pooled": 0.7, "threshold": None, "per_unit": {"accuracy": [1.0]}, "arm": "ignored",
               "short_units": {"unit_ids": [3, 4], "policy": "drop"}, "training": {"train_windows": 50, "epochs": 4},
               "sorted_span": [0, 10]}
    row = result_row(1, 5, "transfer", metrics)
    assert row == {"seed": 1, "k": 5, "arm": "transfer", "accuracy_pooled": 0.7, "threshold": None,
                   "short_units": 2, "short_units_policy": "drop", "train_windows": 50, "epochs": 4}
    assert result_row(0, 1, "scratch", {})["short_units"] == 0


def _metric_rows():
    ks, rows = [1, 2, 5, 10], []
    for seed in (0, 1):
        for k, t, s in zip(ks, [0.5, 0.6, 0.7, 0.8], [0.2, 0.5, 0.6, 0.7]):
            rows.append({"seed": seed, "k": k, "arm": "transfer", "accuracy_pooled": t + 0.01 * seed,
                         "accuracy_mean": t})
            rows.append({"seed": seed, "k": k, "arm": "scratch", "accuracy_pooled": s + 0.01 * seed,
                         "accuracy_mean": s})
    return rows


def test_summarise_gives_summary_by_k_gain_and_reduction():
    out = summarise(_metric_rows(), ["transfer", "scratch"], "accuracy_mean", reference=0.65)
    assert len(out["summary"]) == 8 and all(r["n_seeds"] == 2 for r in out["summary"])
    cell = out["by_k"]["k5"]["transfer"]
    assert cell["accuracy_pooled_mean"] == pytest.approx(0.705) and cell["accuracy_pooled_std"] > 0
    assert out["by_k"]["k2"]["gain_accuracy_mean"] == {"mean": pytest.approx(0.1), "std": 0.0, "n": 2}
    assert [g["k"] for g in out["gain"]["accuracy_pooled"]] == [1, 2, 5, 10]
    reduction = out["label_reduction"]
    assert reduction["metric"] == "accuracy_mean"
    assert [level["at_k"] for level in reduction["levels"]] == [1, 2, 5, 10]
    # transfer at K=2 (0.6) is reached by scratch at K=5: 2.5x
    assert reduction["levels"][1]["ratio"] == pytest.approx(2.5)
    assert reduction["headline"] == reduction_headline(reduction["levels"])
    # 0.65 lies halfway (in log K) between 2 and 5 for transfer, between 5 and 10 for scratch
    assert reduction["reference"]["ratio"] == pytest.approx(math.sqrt(50) / math.sqrt(10))


def test_summarise_one_arm_has_no_gain_or_reduction():
    rows = [r for r in _metric_rows() if r["arm"] == "transfer"]
    out = summarise(rows, ["transfer"], "accuracy_pooled", reference=None)
    assert set(out) == {"summary", "by_k"} and set(out["by_k"]["k1"]) == {"transfer"}
    both = summarise(_metric_rows(), ["transfer", "scratch"], "accuracy_pooled", reference=None)
    assert "reference" not in both["label_reduction"]
