"""esort_jax.postprocess: exact peak semantics, chunk invariance, overflow, config.

The slow obvious reference walks each smoothed trace run by run (numpy, Python loops) and
applies the documented min-distance rule pair by pair; it reads the smoothed values from
`smooth`, which is bit-identical to what the chunk function computes.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from esort_jax.config import ConfigError, from_dict
from esort_jax.postprocess import (
    CapacityOverflowError,
    PostprocessConfig,
    find_spikes,
    smooth,
    triangular_kernel,
)
from esort_jax.recording import Sorting

FS = 32000.0
# Shapes shared across tests so that each compiles once: N = 3 units, capacity 128.
CAPACITY = 128


@pytest.fixture(autouse=True, scope="module")
def _quick_compiles():
    """XLA optimisations off for this module: compiles take a fraction of the time. The
    operations are exact IEEE float32 either way (no re-association), so results agree."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def reference_peaks(sm: np.ndarray, threshold: float, min_distance: int) -> np.ndarray:
    """Leftmost sample of each run of equal values with lower values on both sides (outside
    the trace: -inf) and value >= threshold; then drop a peak with a higher peak, or an equal
    earlier one, closer than min_distance."""
    T = sm.size
    peaks = []
    t = 0
    while t < T:
        end = t
        while end + 1 < T and sm[end + 1] == sm[t]:
            end += 1
        before = sm[t - 1] if t > 0 else -np.inf
        after = sm[end + 1] if end + 1 < T else -np.inf
        if sm[t] >= threshold and before < sm[t] and after < sm[t]:
            peaks.append(t)
        t = end + 1
    kept = []
    for a in peaks:
        dropped = any(
            b != a and abs(b - a) < min_distance and (sm[b] > sm[a] or (sm[b] == sm[a] and b < a))
            for b in peaks
        )
        if not dropped:
            kept.append(a)
    return np.asarray(kept, dtype=np.int64)


def traces_with_boundary_features(rng, num_units, num_steps, boundaries, plateau_max=20):
    """Low random background plus, at each boundary b: saturated runs whose smoothed plateau
    starts at b, ends at b - 1 or straddles b, and single-sample spikes at b - 1, b, b + 1."""
    p = (0.35 * rng.random((num_units, num_steps)) ** 3).astype(np.float32)
    h = 8
    for b in boundaries:
        n = rng.integers(num_units)
        kind = rng.integers(5)
        length = int(rng.integers(1, plateau_max))  # smoothed plateau length
        if kind == 0:  # plateau starting exactly at b
            start = b - h
        elif kind == 1:  # plateau ending exactly at b - 1
            start = b - length - h
        elif kind == 2:  # plateau straddling b
            start = b - length // 2 - h
        else:  # isolated spike at b - 1, b or b + 1
            t = b + kind - 4
            if 0 <= t < num_steps:
                p[n, t] = 1.0
            continue
        lo, hi = max(start, 0), min(start + length + 2 * h, num_steps)
        p[n, lo:hi] = 1.0
    return p


def assert_same(a: Sorting, b: Sorting):
    np.testing.assert_array_equal(a.samples, b.samples)
    np.testing.assert_array_equal(a.unit_indices, b.unit_indices)


def test_smooth_is_the_triangular_convolution():
    rng = np.random.default_rng(0)
    p = rng.random((2, 300)).astype(np.float32)
    for taps, norm in [(17, "peak"), (17, "sum"), (5, "peak")]:
        kernel = triangular_kernel(taps, norm)
        expected = np.stack([np.convolve(row.astype(np.float64), kernel, mode="same") for row in p])
        np.testing.assert_allclose(np.asarray(smooth(p, taps, norm)), expected, rtol=2e-6, atol=1e-6)
    assert triangular_kernel(17, "peak").sum() == pytest.approx(9.0)
    assert triangular_kernel(17, "peak").max() == 1.0
    assert triangular_kernel(17, "sum").sum() == pytest.approx(1.0)


@pytest.mark.parametrize("min_distance, chunk_sizes", [(0, (37, 128)), (7, (37,))])
def test_chunked_equals_one_pass_equals_reference(min_distance, chunk_sizes):
    rng = np.random.default_rng(min_distance)
    num_steps, threshold = 420, 1.2
    boundaries = sorted({b for c in (37, 128) for b in range(0, num_steps + 1, c)} | {1, num_steps - 1})
    p = traces_with_boundary_features(rng, 3, num_steps, boundaries)
    sm = np.asarray(smooth(p))
    ids = np.array([11, 22, 33])
    base = dict(threshold=threshold, min_distance_samples=min_distance, capacity=CAPACITY)
    stats = {}
    whole, scores = find_spikes(p, sampling_frequency=FS, unit_ids=ids, sample_offset=1000,
                                config=PostprocessConfig(chunk_steps=512, **base),
                                return_scores=True, stats=stats)
    assert stats["chunks"] == 1 and stats["exact_reruns"] == 1  # plateaus longer than 4
    for n in range(3):
        expected = reference_peaks(sm[n], np.float32(threshold), min_distance)
        np.testing.assert_array_equal(whole.unit_samples(n) - 1000, expected)
    np.testing.assert_array_equal(scores, sm[whole.unit_indices, whole.samples - 1000])
    assert whole.unit_ids.tolist() == ids.tolist() and whole.sampling_frequency == FS
    assert whole.num_spikes > 15
    for chunk_steps in chunk_sizes:
        chunked, chunked_scores = find_spikes(
            p, sampling_frequency=FS, unit_ids=ids, sample_offset=1000,
            config=PostprocessConfig(chunk_steps=chunk_steps, **base), return_scores=True,
        )
        assert_same(chunked, whole)
        np.testing.assert_array_equal(chunked_scores, scores)


def test_streamed_pieces_and_batched_chunks_equal_one_pass():
    rng = np.random.default_rng(5)
    p = traces_with_boundary_features(rng, 3, 500, list(range(0, 501, 37)))
    config = PostprocessConfig(threshold=1.2, chunk_steps=37, capacity=CAPACITY, min_distance_samples=7)
    whole = find_spikes(p, sampling_frequency=FS, config=PostprocessConfig(
        threshold=1.2, chunk_steps=512, capacity=CAPACITY, min_distance_samples=7))
    cuts = np.sort(rng.choice(np.arange(1, 500), 12, replace=False))
    pieces = np.split(p, cuts, axis=1)
    stats = {}
    streamed = find_spikes(iter(pieces), sampling_frequency=FS, config=config, stats=stats)
    assert_same(streamed, whole)
    assert stats["num_steps"] == 500 and stats["chunks"] == 14
    batched = find_spikes(p, sampling_frequency=FS,
                          config=PostprocessConfig(**{**vars(config), "chunks_per_call": 3}))
    assert_same(batched, whole)


def test_long_plateau_across_chunks_needs_more_context():
    # one saturated run whose smoothed plateau (length 150) spans several 37-step chunks; the
    # plateau ends with a drop, so it is one spike at its first sample
    p = np.zeros((3, 400), np.float32)
    p[0, 60 - 8:210 + 8] = 1.0  # plateau on [60, 210)
    p[1, 300 - 8:400] = 1.0  # a plateau running into the zero padding past the trace end
    stats = {}
    sorting = find_spikes(p, sampling_frequency=FS, config=PostprocessConfig(
        threshold=8.0, chunk_steps=37, capacity=CAPACITY), stats=stats)
    assert sorting.unit_samples(0).tolist() == [60]
    assert sorting.unit_samples(1).tolist() == [300]
    assert sorting.unit_samples(2).size == 0
    assert stats["exact_reruns"] >= 1 and stats["context_reruns"] >= 1
    # a shoulder (rise, flat, rise) is not a peak
    q = np.zeros((1, 200), np.float32)
    q[0, 50:80] = 0.5
    q[0, 80:90] = 1.0
    assert find_spikes(q, sampling_frequency=FS, config=PostprocessConfig(
        kernel_taps=1, threshold=0.4, chunk_steps=37, capacity=8)).samples.tolist() == [80]


def test_min_distance_rule_is_non_greedy_and_breaks_ties_to_the_left():
    # kernel_taps=1: no smoothing, so the heights are exactly these values
    p = np.zeros((1, 60), np.float32)
    p[0, [5, 9, 13]] = [0.5, 0.7, 0.9]  # chain: 9 drops 5, 13 drops 9 -> only 13 stays
    p[0, [30, 33]] = [0.6, 0.6]  # tie: the earlier stays
    p[0, [45, 50]] = [0.6, 0.8]  # exactly d apart: both stay
    config = PostprocessConfig(kernel_taps=1, threshold=0.1, min_distance_samples=5, chunk_steps=16, capacity=8)
    assert find_spikes(p, sampling_frequency=FS, config=config).samples.tolist() == [13, 30, 45, 50]
    off = PostprocessConfig(kernel_taps=1, threshold=0.1, chunk_steps=16, capacity=8)
    assert find_spikes(p, sampling_frequency=FS, config=off).samples.tolist() == [5, 9, 13, 30, 33, 45, 50]


def test_trace_ends_and_empty_inputs():
    p = np.zeros((1, 50), np.float32)
    p[0, 0] = 1.0
    p[0, 49] = 1.0
    config = PostprocessConfig(kernel_taps=1, threshold=0.5, chunk_steps=16, capacity=8)
    assert find_spikes(p, sampling_frequency=FS, config=config).samples.tolist() == [0, 49]
    empty = find_spikes(np.zeros((2, 0), np.float32), sampling_frequency=FS, unit_ids=["a", "b"],
                        config=config)
    assert empty.num_spikes == 0 and empty.unit_ids.tolist() == ["a", "b"]
    with pytest.raises(ValueError, match="unit_ids must have 1 entries"):
        find_spikes(p, sampling_frequency=FS, unit_ids=[1, 2], config=config)


def test_capacity_overflow_is_rerun_or_raised():
    rng = np.random.default_rng(9)
    p = rng.random((3, 300)).astype(np.float32)
    small = PostprocessConfig(threshold=1.0, chunk_steps=128, capacity=2)
    large = PostprocessConfig(threshold=1.0, chunk_steps=128, capacity=CAPACITY)
    stats = {}
    rerun = find_spikes(p, sampling_frequency=FS, config=small, stats=stats)
    assert stats["capacity_reruns"] == 3  # every chunk overflows once
    assert_same(rerun, find_spikes(p, sampling_frequency=FS, config=large))
    assert rerun.num_spikes > 3 * 3 * 2
    with pytest.raises(CapacityOverflowError, match="capacity 2"):
        find_spikes(p, sampling_frequency=FS,
                    config=PostprocessConfig(**{**vars(small), "on_overflow": "raise"}))


def test_config_from_dict_and_validation():
    config = from_dict(PostprocessConfig, {"threshold": 2, "min_distance_samples": 10}, "postprocess")
    assert config.threshold == 2.0 and config.kernel_sum == 9.0
    assert PostprocessConfig().effective_threshold == pytest.approx(1.5)
    assert PostprocessConfig(normalisation="sum").effective_threshold == pytest.approx(1.5 / 9)
    assert PostprocessConfig(threshold=9.0).effective_threshold == 9.0  # the maximum is allowed
    with pytest.raises(ConfigError, match=r"postprocess\.threshold: must lie in \(0, 9\]"):
        from_dict(PostprocessConfig, {"threshold": 9.5}, "postprocess")
    with pytest.raises(ConfigError, match=r"postprocess\.threshold: must lie in \(0, 1\]"):
        from_dict(PostprocessConfig, {"threshold": 1.5, "normalisation": "sum"}, "postprocess")
    with pytest.raises(ConfigError, match=r"postprocess\.kernel_taps"):
        from_dict(PostprocessConfig, {"kernel_taps": 16}, "postprocess")
    with pytest.raises(ConfigError, match=r"postprocess\.threshold"):
        find_spikes(np.zeros((1, 10), np.float32), sampling_frequency=FS, threshold=0.0)
