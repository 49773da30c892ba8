"""esort_jax.online.peaks: the streaming peak picker equals postprocess.find_spikes on the same
traces for any cut into blocks -- ties, plateaus, shoulders, peaks at the trace's ends, minimum
distances -- and decides every peak as soon as the rule allows."""

from __future__ import annotations

import numpy as np
import pytest

from esort_jax.online.peaks import StreamingPeaks
from esort_jax.postprocess import PostprocessConfig, find_spikes, smooth

SEED = 20250115  # named seed of the random traces and cuts


def _offline(p_NxT, threshold, min_distance):
    config = PostprocessConfig(min_distance_samples=min_distance, chunk_steps=257)
    sorting, scores = find_spikes(p_NxT, sampling_frequency=1.0, config=config, threshold=threshold,
                                  return_scores=True)
    return sorting.samples, sorting.unit_indices, scores


def _streamed(sm_NxT, threshold, min_distance, cuts):
    peaks = StreamingPeaks(sm_NxT.shape[0], threshold, min_distance)
    parts = [peaks.push(sm_NxT[:, a:b]) for a, b in zip(cuts[:-1], cuts[1:])] + [peaks.finish()]
    index, unit, height = (np.concatenate(c) for c in zip(*parts))
    order = np.lexsort((unit, index))
    return index[order], unit[order], height[order]


def _cuts(rng, total):
    sizes = rng.choice([1, 2, 3, 5, 17, 40, 200, total], size=total)
    return np.unique(np.concatenate([[0], np.minimum(np.cumsum(sizes), total), [total]]))


def _quantised_traces(rng, num_units, num_steps):
    """Probabilities on a coarse grid (many exactly equal smoothed values) with saturated runs."""
    p = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], size=(num_units, num_steps), p=[0.5, 0.2, 0.1, 0.1, 0.1])
    for n in range(num_units):
        for start in rng.integers(0, num_steps - 60, size=3):
            p[n, start:start + rng.integers(20, 60)] = 1.0  # plateaus of the smoothed trace
    return p.astype(np.float32)


@pytest.mark.parametrize("min_distance", [0, 2, 5, 30])
@pytest.mark.parametrize("case", range(4))
def test_any_cut_equals_find_spikes(min_distance, case):
    rng = np.random.default_rng((SEED, min_distance, case))
    p = _quantised_traces(rng, num_units=4, num_steps=1500) if case % 2 else rng.random((4, 1500), np.float32)
    threshold = 2.0 if case % 2 else 5.0
    sm = np.asarray(smooth(p))
    expected = _offline(p, threshold, min_distance)
    assert expected[0].size > 10
    for _ in range(3):
        got = _streamed(sm, threshold, min_distance, _cuts(rng, p.shape[1]))
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)


def test_peaks_at_the_ends_of_the_trace_and_a_plateau_to_the_end():
    sm = np.array([[3.0, 1.0, 2.0, 2.0, 2.0, 5.0, 5.0]], np.float32)  # peak at 0; rises to a plateau at the end
    index, _, height = _streamed(sm, 1.5, 0, [0, 1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(index, [0, 5])  # 2,2,2 is a shoulder (rise, flat, rise), not a peak
    np.testing.assert_array_equal(height, [3.0, 5.0])


def test_a_peak_is_final_as_soon_as_its_run_ends():
    peaks = StreamingPeaks(1, threshold=1.0)
    assert len(peaks.push(np.array([[0.0, 2.0]], np.float32))[0]) == 0  # 2.0 may still rise
    assert len(peaks.push(np.array([[2.0] * 50], np.float32))[0]) == 0  # a plateau: still open
    index, _, _ = peaks.push(np.array([[1.0]], np.float32))  # it ends lower: final now
    np.testing.assert_array_equal(index, [1])


def test_min_distance_holds_a_peak_only_while_a_higher_one_can_come():
    peaks = StreamingPeaks(1, threshold=1.0, min_distance=4)  # reach 3
    assert len(peaks.push(np.array([[0.0, 3.0, 1.0]], np.float32))[0]) == 0  # index 1; reach to 4
    assert len(peaks.push(np.array([[2.0]], np.float32))[0]) == 0  # index 3 rises: could still outgrow it
    index, _, _ = peaks.push(np.array([[1.0]], np.float32))  # 3 was a lower peak: 1 stays, 3 dropped
    np.testing.assert_array_equal(index, [1])
    assert len(peaks.finish()[0]) == 0


def test_state_is_bounded_on_a_long_stream():
    rng = np.random.default_rng(SEED)
    peaks = StreamingPeaks(3, threshold=1.0, min_distance=8)
    for _ in range(400):
        peaks.push(np.asarray(smooth(rng.random((3, 500), np.float32))))
    assert peaks.next_index == 400 * 500
    assert sum(len(v) for v in peaks._recent.values()) <= 3 * 8  # peaks within reach only
