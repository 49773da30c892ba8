"""esort_jax.evaluate against SpikeInterface 0.105's ground-truth comparison.

SpikeInterface's matching kernel (`comparisontools.get_optimized_compute_matching_matrix`)
is numba-jitted and its comparison classes need pandas. When numba is missing we run the very
same kernel source as plain Python (a stand-in `numba.jit` that returns the function); the
glue around it (clip, agreement, Hungarian, count table) is transcribed from SpikeInterface in
`_si_reference`. When pandas and numba are both installed, `test_equals_compare_sorter_to_ground_truth`
also checks against `compare_sorter_to_ground_truth` itself.
"""

from __future__ import annotations


import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from esort_jax.evaluate import EvaluationResult, evaluate, match_count_matrix, tolerance_to_samples
from esort_jax.recording import Sorting
from esort_jax.report.tables import evaluation_table

FS = 30000.0


@pytest.fixture(scope="module")
def si():
    """(NumpySorting, SpikeInterface's numba match-count kernel)."""
    import spikeinterface.comparison.comparisontools as ct
    import spikeinterface.core as core

    return core.NumpySorting, ct.get_optimized_compute_matching_matrix()


def _numpy_sorting(NumpySorting, sorting: Sorting):
    return NumpySorting.from_samples_and_labels(
        [sorting.samples], [sorting.unit_ids[sorting.unit_indices]], sorting.sampling_frequency,
        unit_ids=sorting.unit_ids,
    )


def _si_counts(si, truth: Sorting, predicted: Sorting, delta: int) -> np.ndarray:
    """make_match_count_matrix(truth, predicted, delta, ensure_symmetry=False) without pandas."""
    NumpySorting, kernel = si
    s1, s2 = _numpy_sorting(NumpySorting, truth), _numpy_sorting(NumpySorting, predicted)
    v1 = s1.to_spike_vector(concatenated=False)[0]
    v2 = s2.to_spike_vector(concatenated=False)[0]
    counts = kernel(v1["sample_index"], v2["sample_index"], v1["unit_index"], v2["unit_index"],
                    s1.get_num_units(), s2.get_num_units(), delta)
    counts = np.clip(counts.astype(np.int64), None, s2.count_num_spikes_per_unit(outputs="array")[None, :])
    return counts


def _si_reference(si, truth, predicted, delta, match_score=0.5):
    """SpikeInterface's GroundTruthComparison count table (hungarian, count agreement)."""
    counts = _si_counts(si, truth, predicted, delta)
    n1, n2 = truth.spike_counts(), predicted.spike_counts()
    # make_agreement_scores_from_count
    denom = n1[:, None] + n2[None, :] - counts
    denom[denom == 0] = -1
    scores = counts / denom
    # make_hungarian_match
    thresholded = scores.copy()
    thresholded[thresholded < match_score] = 0
    rows, cols = linear_sum_assignment(-thresholded)
    match = np.full(truth.num_units, -1)
    for r, c in zip(rows, cols):
        if scores[r, c] >= match_score:
            match[r] = c
    # do_count_score
    tp = np.where(match >= 0, counts[np.arange(truth.num_units), np.maximum(match, 0)], 0)
    fp = np.where(match >= 0, n2[np.maximum(match, 0)] - tp, 0)
    fn = n1 - tp
    well = sum(scores[r, match[r]] >= 0.8 for r in range(truth.num_units) if match[r] >= 0)
    return dict(tp=tp, fp=fp, fn=fn, match=match, counts=counts, well_detected=well)


def _random_case(rng, num_units=4, num_extra=1, delta=12, span=6000, relabel=False):
    """Truth with bursts, and a prediction: kept / jittered (inside, on and past the tolerance)
    / duplicated true spikes, extra spikes, and extra predicted units."""
    truth_trains, pred_trains = {}, {}
    for u in range(num_units):
        base = rng.integers(0, span, rng.integers(0, 40))
        bursts = [b + np.cumsum(rng.integers(1, delta + 3, 3)) for b in rng.integers(0, span, 3)]
        train = np.sort(np.concatenate([base, *bursts]))
        truth_trains[u] = train
        kept = train[rng.random(train.size) > 0.2]
        jitter = rng.choice([0, 1, -1, delta, -delta, delta + 1, -(delta + 1), 3 * delta], kept.size)
        extra = rng.integers(0, span, rng.integers(0, 8))
        doubles = kept[rng.random(kept.size) < 0.15] + rng.integers(-delta, delta + 1)
        pred_trains[u] = np.concatenate([kept + jitter, extra, doubles])
    for k in range(num_extra):
        pred_trains[num_units + k] = rng.integers(0, span, rng.integers(0, 30))
    truth = Sorting.from_unit_dict(truth_trains, FS)
    if relabel:  # other sorter's ids: a permutation of arbitrary ints, sorted like SpikeInterface
        ids = rng.permutation(np.arange(100, 100 + len(pred_trains)))
        pred_trains = {int(ids[k]): v for k, v in enumerate(pred_trains.values())}
    pred_trains = {k: pred_trains[k] for k in sorted(pred_trains)}
    return truth, Sorting.from_unit_dict(pred_trains, FS)


@pytest.mark.parametrize("delta", [0, 3, 12, 30])
def test_match_counts_equal_spikeinterface_kernel(si, delta):
    rng = np.random.default_rng(delta)
    for _ in range(25):
        truth, predicted = _random_case(rng, delta=max(delta, 1), span=3000)
        expected = _si_counts(si, truth, predicted, delta)
        ours = match_count_matrix(truth.samples, truth.unit_indices, predicted.samples,
                                  predicted.unit_indices, truth.num_units, predicted.num_units, delta)
        np.testing.assert_array_equal(ours, expected)


def test_burst_quirk_is_reproduced(si):
    # SpikeInterface lets a predicted spike match again once another one was matched in between
    truth = Sorting.from_unit_dict({0: [0, 1, 2]}, FS)
    predicted = Sorting.from_unit_dict({0: [0, 1, 100]}, FS)
    assert _si_counts(si, truth, predicted, 5)[0, 0] == 3
    result = evaluate(predicted, truth, tolerance_samples=5)
    assert (result.tp[0], result.fp[0], result.fn[0]) == (3, 0, 0)


@pytest.mark.parametrize("seed", range(6))
def test_unknown_identities_equal_spikeinterface(si, seed):
    rng = np.random.default_rng(100 + seed)
    truth, predicted = _random_case(rng, num_units=5, num_extra=2, relabel=True)
    result = evaluate(predicted, truth, tolerance_ms=0.4, identities="unknown")
    delta = tolerance_to_samples(0.4, FS)
    assert delta == result.tolerance_samples == 12
    ref = _si_reference(si, truth, predicted, delta)
    np.testing.assert_array_equal(result.tp, ref["tp"])
    np.testing.assert_array_equal(result.fp, ref["fp"])
    np.testing.assert_array_equal(result.fn, ref["fn"])
    np.testing.assert_array_equal(result.pred_index, ref["match"])
    assert result.well_detected == ref["well_detected"]
    # unpaired predicted units are pooled false positives
    used = np.zeros(predicted.num_units, bool)
    used[ref["match"][ref["match"] >= 0]] = True
    assert result.unmatched_pred_spikes == int(predicted.spike_counts()[~used].sum())
    assert result.fp_total == int(ref["fp"].sum()) + result.unmatched_pred_spikes


@pytest.mark.parametrize("seed", range(4))
def test_known_identities_use_the_pair_with_the_same_id(si, seed):
    rng = np.random.default_rng(200 + seed)
    truth, predicted = _random_case(rng, num_units=5, num_extra=1)
    result = evaluate(predicted, truth, tolerance_ms=0.4, identities="known")
    counts = _si_counts(si, truth, predicted, 12)
    diagonal = counts[np.arange(5), np.arange(5)]
    np.testing.assert_array_equal(result.tp, diagonal)
    np.testing.assert_array_equal(result.fn, truth.spike_counts() - diagonal)
    np.testing.assert_array_equal(result.fp, predicted.spike_counts()[:5] - diagonal)
    assert result.unmatched_pred_units == 1  # unit 5 has no true counterpart
    ref = _si_reference(si, truth, predicted, 12)
    paired_as_self = ref["match"] == np.arange(5)
    # where SpikeInterface's Hungarian pairs unit u with u, both modes agree
    np.testing.assert_array_equal(result.tp[paired_as_self], ref["tp"][paired_as_self])
    np.testing.assert_array_equal(result.fp[paired_as_self], ref["fp"][paired_as_self])


def test_known_identities_count_what_spikeinterface_leaves_unpaired(si):
    # a poor unit (agreement < 0.5): SpikeInterface reports tp = fp = 0 for it; known mode
    # still counts its matches and false positives
    truth = Sorting.from_unit_dict({0: np.arange(0, 3000, 100), 1: np.arange(50, 3000, 100)}, FS)
    half_right = np.r_[np.arange(50, 1000, 100), np.arange(75, 3000, 100)]
    predicted = Sorting.from_unit_dict({0: np.arange(0, 3000, 100), 1: half_right}, FS)
    ref = _si_reference(si, truth, predicted, 12)
    assert ref["match"].tolist() == [0, -1] and ref["tp"][1] == 0 and ref["fp"][1] == 0
    known = evaluate(predicted, truth, tolerance_samples=12)
    assert known.tp[1] == 10 and known.fp[1] == predicted.spike_counts()[1] - 10 and known.fn[1] == 20
    unknown = evaluate(predicted, truth, tolerance_samples=12, identities="unknown")
    np.testing.assert_array_equal(unknown.tp, ref["tp"])
    np.testing.assert_array_equal(unknown.fp, ref["fp"])
    assert unknown.unmatched_pred_spikes == predicted.spike_counts()[1]


def test_equals_compare_sorter_to_ground_truth(si):
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    NumpySorting, _ = si
    rng = np.random.default_rng(7)
    for relabel in (False, True):
        truth, predicted = _random_case(rng, num_units=5, num_extra=2, relabel=relabel)
        comparison = compare_sorter_to_ground_truth(
            _numpy_sorting(NumpySorting, truth), _numpy_sorting(NumpySorting, predicted),
            delta_time=0.4, exhaustive_gt=True,
        )
        result = evaluate(predicted, truth, tolerance_ms=0.4, identities="unknown")
        table = comparison.count_score
        for column in ("tp", "fp", "fn"):
            np.testing.assert_array_equal(table[column].to_numpy(dtype=np.int64), getattr(result, column))
        perf = comparison.get_performance(method="by_unit")
        np.testing.assert_allclose(perf["accuracy"].to_numpy(dtype=float), result.accuracy)
        assert comparison.count_well_detected_units(0.8) == result.well_detected


def test_tolerance_boundary_is_inclusive():
    truth = Sorting.from_unit_dict({0: [1000, 2000, 3000, 4000]}, FS)
    predicted = Sorting.from_unit_dict({0: [1012, 1988, 3013, 3987]}, FS)
    result = evaluate(predicted, truth, tolerance_ms=0.4)  # 12 samples at 30 kHz
    assert (result.tp[0], result.fp[0], result.fn[0]) == (2, 2, 2)
    assert result.accuracy[0] == pytest.approx(2 / 6)
    assert tolerance_to_samples(0.4, 32000.0) == 12  # 12.8 truncates, as SpikeInterface
    assert evaluate(predicted, truth, tolerance_samples=13).tp[0] == 4


def test_empty_predictions_and_silent_units():
    truth = Sorting.from_unit_dict({0: [10, 500], 1: [], 2: [900]}, FS)
    predicted = Sorting.from_unit_dict({0: [], 1: [], 2: [901]}, FS)
    result = evaluate(predicted, truth)
    assert result.tp.tolist() == [0, 0, 1] and result.fn.tolist() == [2, 0, 0]
    assert result.accuracy[0] == 0.0 and np.isnan(result.accuracy[1]) and result.accuracy[2] == 1.0
    assert result.accuracy_mean == pytest.approx(0.5)  # unit 1 has no spike: not averaged
    assert result.accuracy_pooled == pytest.approx(1 / 3)
    summary = result.to_dict()
    assert summary["n_units"] == 3 and summary["n_units_evaluated"] == 2
    nothing = evaluate(Sorting.from_unit_dict({}, FS), truth, identities="unknown")
    assert nothing.tp.sum() == 0 and nothing.fn.tolist() == [2, 0, 1]
    assert nothing.accuracy_pooled == 0.0 and nothing.well_detected == 0
    empty = evaluate(Sorting.from_unit_dict({0: []}, FS), Sorting.from_unit_dict({0: []}, FS))
    assert np.isnan(empty.accuracy_pooled) and np.isnan(empty.accuracy_mean)


def test_span_restricts_both_sortings():
    truth = Sorting.from_unit_dict({0: [100, 5000, 9000]}, FS)
    predicted = Sorting.from_unit_dict({0: [100, 5003, 7000]}, FS)
    result = evaluate(predicted, truth, span=(4000, 10000))
    assert (result.tp[0], result.fp[0], result.fn[0], result.num_gt[0]) == (1, 1, 1, 2)
    assert result.span == (4000, 10000)


def test_per_unit_rows_name_the_paired_unit():
    truth = Sorting.from_unit_dict({0: [100, 5000], 1: [9000]}, FS)
    predicted = Sorting.from_unit_dict({7: [101, 5001], 8: [20000]}, FS)
    rows = evaluate(predicted, truth, identities="unknown").per_unit()
    assert rows["unit_ids"] == [0, 1] and rows["matched_unit"] == [7, None]
    assert rows["tp"] == [2, 0] and rows["fn"] == [0, 1] and rows["num_gt"] == [2, 1]
    assert rows["accuracy"] == [1.0, 0.0]
    import json

    json.dumps(rows)  # plain Python values only


def test_summary_dict_and_table():
    rng = np.random.default_rng(3)
    truth, predicted = _random_case(rng)
    result = evaluate(predicted, truth)
    assert isinstance(result, EvaluationResult)
    summary = result.to_dict()
    for key in ("accuracy_pooled", "precision_pooled", "recall_pooled", "accuracy_mean",
                "accuracy_median", "precision_mean", "recall_mean", "well_detected", "n_units",
                "tolerance_ms"):
        assert key in summary
    tp, fp, fn = result.tp.sum(), result.fp.sum() + result.unmatched_pred_spikes, result.fn.sum()
    assert summary["accuracy_pooled"] == pytest.approx(tp / (tp + fp + fn))
    assert summary["precision_pooled"] == pytest.approx(tp / (tp + fp))
    assert summary["recall_pooled"] == pytest.approx(tp / (tp + fn))
    assert summary["accuracy_median"] == pytest.approx(np.median(result.accuracy))
    text = evaluation_table(result)
    assert "pooled: accuracy" in text and len(text.splitlines()) == truth.num_units + 6
    excluding = evaluate(predicted, truth, unmatched_pred_as_fp=False)
    assert excluding.fp_total == result.fp.sum()


def test_rejects_mismatched_sampling_frequency():
    with pytest.raises(ValueError, match="sampling frequencies differ"):
        evaluate(Sorting.from_unit_dict({0: [1]}, 32000.0), Sorting.from_unit_dict({0: [1]}, 30000.0))


def test_scored_span_is_the_anchors_of_the_windows_inside():
    from esort_jax.evaluate import scored_span

    # windows of 60 starting at 1000 ... 1940 lie inside [1000, 2000); their anchors are 1029 ... 1969
    assert scored_span((1000, 2000), window=60, anchor=29) == (1029, 1970)
    assert scored_span((0, 60), window=60, anchor=29) == (29, 30)


def test_evaluation_config_errors_name_the_key():
    from esort_jax.config import ConfigError, from_dict
    from esort_jax.evaluate import EvaluationConfig

    with pytest.raises(ConfigError, match=r"evaluation\.thresholds: must be > 0"):
        from_dict(EvaluationConfig, {"thresholds": [1.0, -1.0]}, "evaluation")
    with pytest.raises(ConfigError, match=r"evaluation\.tolerance_ms"):
        from_dict(EvaluationConfig, {"tolerance_ms": 0.0}, "evaluation")
