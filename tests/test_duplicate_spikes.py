"""esort_jax.duplicate_spikes: one spike, one unit -- the weaker of two neighbouring units'
detections of one spike is dropped, by a rule that commutes with the threshold."""

import numpy as np
import pytest

from esort_jax.duplicate_spikes import choose_radius_and_threshold, duplicate_mask, unit_positions
from esort_jax.recording import Sorting
from esort_jax.train import TrainConfig
from tests._tiny import TINY_MODEL, fast_compile, tiny_recording  # noqa: F401  (fixture)

# units 0 and 1 sit 10 µm apart, unit 2 far away, unit 3 has no position
POSITIONS = np.array([[0.0, 0.0], [0.0, 10.0], [0.0, 500.0], [np.nan, np.nan]])


def brute_force(samples, units, scores, positions, radius, window):
    """The module's rule read literally, pair by pair."""
    drop = np.zeros(len(samples), dtype=bool)
    for i in range(len(samples)):
        for j in range(len(samples)):
            if i == j or units[i] == units[j] or abs(int(samples[i]) - int(samples[j])) > window:
                continue
            if not np.linalg.norm(positions[units[i]] - positions[units[j]]) <= radius:
                continue
            stronger = scores[j] > scores[i] or (
                scores[j] == scores[i] and (samples[j], units[j]) < (samples[i], units[i]))
            drop[i] |= stronger
    return drop


def test_the_weaker_of_two_neighbours_within_the_window_is_dropped():
    samples = np.array([100, 105, 103, 300, 320, 500, 502, 700, 702, 900, 900])
    units = np.array([0, 1, 2, 0, 1, 0, 0, 0, 3, 0, 1])
    scores = np.array([2.0, 1.0, 0.5, 1.0, 3.0, 1.0, 2.0, 1.0, 5.0, 1.5, 1.5])
    drop = duplicate_mask(samples, units, scores, POSITIONS, radius_um=20, window_samples=13)
    # 105 (unit 1) loses to unit 0 at 100; unit 2 at 103 is far; 300/320 are 20 samples apart;
    # 500/502 are one unit (its own minimum distance is postprocess's job); unit 3 has no place;
    # the tie at 900 goes to the lower unit index
    assert drop.tolist() == [False, True, False, False, False, False, False, False, False, False, True]
    assert not duplicate_mask(samples, units, scores, POSITIONS, radius_um=0, window_samples=13).any()
    assert not duplicate_mask(samples, units, scores, POSITIONS, radius_um=5, window_samples=13).any()
    assert duplicate_mask(samples, units, scores, POSITIONS, radius_um=20, window_samples=20)[3]  # 300 loses to 320


def test_the_rule_is_not_iterative_and_matches_a_pair_by_pair_reading():
    # a chain: 0 beats 1, 1 beats 2 (dropped detections still drop others), 0 and 2 are 30 µm apart
    chain = np.array([[0.0, 0.0], [0.0, 15.0], [0.0, 30.0]])
    drop = duplicate_mask(np.array([10, 12, 14]), np.array([0, 1, 2]), np.array([3.0, 2.0, 1.0]), chain,
                          radius_um=20, window_samples=13)
    assert drop.tolist() == [False, True, True]
    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 100, size=(12, 2))
    for _ in range(20):
        n = int(rng.integers(0, 80))
        samples = rng.integers(0, 400, size=n)
        units = rng.integers(0, 12, size=n)
        scores = rng.choice([0.5, 1.0, 1.5, 2.0], size=n)  # ties are common
        got = duplicate_mask(samples, units, scores, positions, radius_um=40, window_samples=13)
        np.testing.assert_array_equal(got, brute_force(samples, units, scores, positions, 40, 13))


def test_dropping_then_thresholding_equals_thresholding_then_dropping():
    rng = np.random.default_rng(1)
    positions = rng.uniform(0, 60, size=(8, 2))
    samples = rng.integers(0, 2000, size=600)
    units = rng.integers(0, 8, size=600)
    scores = rng.uniform(0.5, 3.0, size=600).astype(np.float32)
    once = duplicate_mask(samples, units, scores, positions, radius_um=30, window_samples=13)
    for threshold in (0.7, 1.3, 2.2):
        above = scores >= threshold
        again = duplicate_mask(samples[above], units[above], scores[above], positions, radius_um=30,
                               window_samples=13)
        np.testing.assert_array_equal(once[above], again)


@pytest.mark.parametrize("change, message", [
    (dict(scores=np.array([1.0, np.nan])), "scores must be finite"),
    (dict(units=np.array([0, 7])), "must index the 4 rows"),
    (dict(samples=np.array([1, 2, 3])), "1-D of one length"),
    (dict(positions=np.zeros((4, 3))), r"positions must be \[N, 2\]"),
])
def test_bad_inputs_are_refused(change, message):
    given = dict(samples=np.array([1, 2]), units=np.array([0, 1]), scores=np.array([1.0, 2.0]), positions=POSITIONS)
    given.update(change)
    with pytest.raises(ValueError, match=message):
        duplicate_mask(given["samples"], given["units"], given["scores"], given["positions"], radius_um=20,
                       window_samples=13)


def _sorting(samples, units, num_units=2):
    order = np.argsort(samples, kind="stable")
    return Sorting(np.asarray(samples)[order], np.asarray(units)[order], np.arange(num_units), 32000.0)


def test_the_radius_is_chosen_on_the_labels_and_zero_wins_where_neighbours_really_collide():
    times = np.arange(20) * 1000 + 100
    labels = _sorting(np.concatenate([times, times[:10] + 500]), np.repeat([0, 1], [20, 10]))
    # unit 1 also fires, weaker, on every spike of unit 0: duplicates the labels do not have
    detections = _sorting(np.concatenate([times, times + 3, times[:10] + 500]), np.repeat([0, 1, 1], [20, 20, 10]))
    scores = np.concatenate([np.full(20, 2.0), np.full(20, 1.0), np.full(10, 2.0)]).astype(np.float32)
    order = np.argsort(np.concatenate([times, times + 3, times[:10] + 500]), kind="stable")
    radius, threshold, curve = choose_radius_and_threshold(
        detections, scores[order], labels, (0, 30000), [0.5, 1.5], POSITIONS[:2], radii_um=(0, 20),
        window_samples=13)
    assert (radius, threshold) == (0.0, 1.5)  # here a threshold alone separates them: the smaller radius wins the tie
    assert curve["accuracy_pooled"][1][0] == pytest.approx(1.0) and curve["dropped"] == [0, 20]
    # the same duplicates scoring as high as real spikes: only the radius removes them
    radius, threshold, _ = choose_radius_and_threshold(
        detections, np.where(scores[order] == 1.0, 1.9, scores[order]).astype(np.float32), labels, (0, 30000),
        [0.5, 1.5], POSITIONS[:2], radii_um=(0, 20), window_samples=13)
    assert (radius, threshold) == (20.0, 0.5)
    # neighbours that really fire together: the labels have both, so dropping one costs; radius 0
    both = _sorting(np.concatenate([times, times + 3]), np.repeat([0, 1], 20))
    radius, _, curve = choose_radius_and_threshold(both, np.full(40, 1.0, np.float32), both, (0, 30000), [0.5],
                                                  POSITIONS[:2], radii_um=(0, 20), window_samples=13)
    assert radius == 0.0 and curve["accuracy_pooled"][0][0] > curve["accuracy_pooled"][1][0]


def test_a_unit_sits_on_the_site_where_its_labelled_spikes_are_largest():
    recording, truth = tiny_recording(num_channels=8, num_units=3, duration_s=1.5, amplitude=10.0, seed=3)
    positions = unit_positions(recording, truth, (0, recording.num_samples))
    # tiny_recording puts unit u at full gain on channel 3u (sites 20 µm apart), less on 3u + 1
    np.testing.assert_array_equal(positions, [[0.0, 0.0], [0.0, 60.0], [0.0, 120.0]])
    late = truth.select_spikes(np.asarray(truth.unit_indices) != 2)
    assert np.isnan(unit_positions(recording, late, (0, recording.num_samples))[2]).all()  # no spike: no place
    with pytest.raises(ValueError, match="span must lie"):
        unit_positions(recording, truth, (0, recording.num_samples + 1))


def test_without_duplicates_at_radius_zero_is_the_sort_it_started_from(fast_compile):  # noqa: F811
    from esort_jax.realdata.diagnose import without_duplicates
    from esort_jax.realdata.workflow import esort_from_labels

    recording, truth = tiny_recording(num_channels=8, num_units=3, duration_s=3.0, amplitude=10.0, seed=3)
    result = esort_from_labels(recording, truth, train_seconds=1.5, model=TINY_MODEL,
                               train=TrainConfig(epochs=4, batch_size=64, progress=False), seed=0)
    same = without_duplicates(result, radii_um=(0.0,))
    assert same.threshold == result.threshold  # the one sweep, on the same span and labels
    np.testing.assert_array_equal(same.sorting.samples, result.sorting.samples)
    np.testing.assert_array_equal(same.sorting.unit_indices, result.sorting.unit_indices)
    np.testing.assert_array_equal(same.scores, result.scores)
    chosen = without_duplicates(result)
    curve = chosen.threshold_curve["duplicates"]
    assert curve["chosen"]["radius_um"] in curve["radius_um"] and chosen.threshold in curve["threshold"]
    assert curve["span"][1] <= result.train_end and curve["window_samples"] == 13
    assert len(curve["unit_positions_um"]) == 3 and chosen.seconds["duplicates"] > 0

