"""esort_jax.online.sorter: pushed block by block, the spikes equal sort_recording's -- same
samples, units and scores -- for any block sizes (1 sample, the window, random, huge), with
spikes at block edges, saturated plateaus spanning many blocks and a minimum distance; each
spike comes out with the first block that makes it final; nothing recompiles while running."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from esort_jax import ArrayTraces, Recording
from esort_jax.infer import fold_batchnorm, predict_probabilities
from esort_jax.online import NonFiniteBlockError, OnlineConfig, OnlineSorter, SpikeBatch
from esort_jax.postprocess import PostprocessConfig, smooth
from esort_jax.sort import sort_recording
from esort_jax.train import init_model
from tests._tiny import TINY_MODEL, tiny_recording

SEED = 1515  # named seed of the random block sequences
UNIT_IDS = np.array([7, 8, 9])
CONFIG = OnlineConfig(max_steps=256)  # a short ladder: quick warm-up, huge blocks get split


@pytest.fixture(scope="module")
def recording():
    recording, _ = tiny_recording(duration_s=0.3)
    return recording


@pytest.fixture(scope="module")
def params(recording):
    model = init_model(recording.num_channels, 3, TINY_MODEL, seed=1)
    model.eval()
    return fold_batchnorm(model)


@pytest.fixture(scope="module")
def saturated(params):
    """The same network with a steep head: probabilities saturate at exactly 1.0 for long runs."""
    return dataclasses.replace(params, k4_SxN=params.k4_SxN * 60.0, b4_N=params.b4_N * 60.0 + 20.0)


_SORTERS: dict = {}  # warmed-up sorters shared by the tests of this module


def _sorter(params, recording, threshold, min_distance=0, **kwargs):
    key = (id(params), threshold, min_distance, tuple(sorted(kwargs.items())))
    if key not in _SORTERS:
        sorter = OnlineSorter(params, UNIT_IDS, threshold=threshold, sampling_frequency=recording.sampling_frequency,
                              postprocess=PostprocessConfig(min_distance_samples=min_distance), config=CONFIG,
                              **kwargs)
        report = sorter.warm_up()
        assert all(size["exact"] for size in report["sizes"].values()) and report["end_exact"]
        _SORTERS[key] = sorter
    _SORTERS[key].reset()
    return _SORTERS[key]


def _offline(params, recording, threshold, min_distance=0, start=0, stop=None):
    return sort_recording(params, recording, UNIT_IDS, threshold=threshold, start=start, stop=stop,
                          postprocess_config=PostprocessConfig(min_distance_samples=min_distance))


def _stream(sorter, x, sizes):
    """Push x in blocks of `sizes` (the last one takes the rest), then flush. Returns the
    concatenated spikes and, per spike, how many samples had been pushed when it came out."""
    sorter.reset()
    batches, seen, start = [], [], 0
    for size in list(sizes) + [len(x)]:
        if start >= len(x):
            break
        stop = min(start + int(size), len(x))
        batch = sorter.push(x[start:stop])
        batches.append(batch)
        seen.append(np.full(len(batch), stop))
        start = stop
    batches.append(sorter.flush())
    seen.append(np.full(len(batches[-1]), -1))  # -1: at the end of the stream
    out = SpikeBatch.concatenate(batches, UNIT_IDS)
    samples, units = np.concatenate([b.samples for b in batches]), np.concatenate([b.unit_indices for b in batches])
    order = np.lexsort((units, samples))
    return out, np.concatenate(seen)[order]


def _assert_equal(online: SpikeBatch, offline) -> None:
    assert offline.sorting.num_spikes > 0
    np.testing.assert_array_equal(online.samples, offline.sorting.samples)
    np.testing.assert_array_equal(online.ids, offline.sorting.unit_ids[offline.sorting.unit_indices])
    np.testing.assert_array_equal(online.scores, offline.scores)  # bit for bit


def _random_sizes(rng, window, count=1000):
    choices = [1, 2, 3, window - 1, window, window + 1, 37, 64, 65, 300, 1000, 4000]
    return rng.choice(choices, size=count)


@pytest.mark.parametrize("min_distance", [0, 12])
def test_random_block_sequences_equal_the_offline_sort(params, recording, min_distance):
    x = recording.read()
    sorter = _sorter(params, recording, threshold=4.0, min_distance=min_distance)
    compiled = sorter.compute.compiled_shapes()
    offline = _offline(params, recording, 4.0, min_distance)
    rng = np.random.default_rng((SEED, min_distance))
    for sizes in (_random_sizes(rng, TINY_MODEL.window), [TINY_MODEL.window] * len(x), [len(x)], [3000, 1, 7]):
        online, _ = _stream(sorter, x, sizes)
        _assert_equal(online, offline)
    assert sorter.compute.compiled_shapes() == compiled  # nothing compiled after warm-up


@pytest.mark.parametrize("min_distance", [0, 25])
def test_one_sample_blocks_through_saturated_plateaus(saturated, recording, min_distance):
    x = recording.read(0, 1500)
    short = Recording(ArrayTraces(x), recording.sampling_frequency, recording.channel_positions)
    sm = np.asarray(smooth(predict_probabilities(saturated, x)))
    assert np.any(_run_lengths(sm) >= 40)  # plateaus of 40+ equal values: 40+ one-sample blocks
    sorter = _sorter(saturated, short, threshold=8.5, min_distance=min_distance)
    online, _ = _stream(sorter, x, [1] * len(x))
    _assert_equal(online, _offline(saturated, short, 8.5, min_distance))


def _run_lengths(sm_NxT: np.ndarray) -> np.ndarray:
    """For every sample, the length of the run of equal values that starts there (1 if none)."""
    lengths = np.ones(sm_NxT.shape, np.int64)
    for t in range(sm_NxT.shape[1] - 2, -1, -1):
        same = sm_NxT[:, t] == sm_NxT[:, t + 1]
        lengths[:, t] = np.where(same, lengths[:, t + 1] + 1, 1)
    return lengths


@pytest.mark.parametrize("which", ["normal", "saturated"])
def test_spikes_at_block_edges_come_out_with_the_block_that_makes_them_final(params, saturated, recording, which):
    """Blocks end exactly where spikes become final (and one sample before/after): each spike
    comes out with the first block that brings sample s + final_after + L - 1 (run length L)."""
    params = saturated if which == "saturated" else params
    threshold = 8.5 if which == "saturated" else 4.0
    x = recording.read()
    offline = _offline(params, recording, threshold)
    sorter = _sorter(params, recording, threshold)
    sm = np.asarray(smooth(predict_probabilities(params, x)))
    t = offline.sorting.samples - TINY_MODEL.anchor
    required = offline.sorting.samples + sorter.final_after + _run_lengths(sm)[offline.sorting.unit_indices, t] - 1
    edges = np.unique(np.concatenate([required + 1, required, required - 1, offline.sorting.samples]))
    edges = edges[(edges > 0) & (edges < len(x))]
    online, seen = _stream(sorter, x, np.diff(np.concatenate([[0], edges])))
    _assert_equal(online, offline)
    block_ends = np.concatenate([edges, [len(x)]])
    inside = required + 1 <= len(x) - 2 * TINY_MODEL.window  # not decided by the end of the stream
    expected = block_ends[np.searchsorted(block_ends, required[inside] + 1)]  # first block end covering it
    assert inside.sum() > 20
    np.testing.assert_array_equal(seen[inside], expected)


def test_int16_input_with_a_gain_equals_the_offline_sort_of_the_same_file(params, recording):
    raw = np.round(recording.read() / 0.25).astype(np.int16)
    as_file = Recording(ArrayTraces(raw, gain_to_uv=0.25), recording.sampling_frequency, recording.channel_positions)
    sorter = _sorter(params, recording, threshold=4.0, gain_to_uv=0.25)
    online, _ = _stream(sorter, raw, _random_sizes(np.random.default_rng(SEED), TINY_MODEL.window))
    _assert_equal(online, _offline(params, as_file, 4.0))


def test_flush_ends_a_stream_and_the_next_starts_at_the_following_sample(params, recording):
    x = recording.read()
    sorter = _sorter(params, recording, threshold=4.0)
    first = SpikeBatch.concatenate([sorter.push(x[:5000]), sorter.flush()], UNIT_IDS)
    second = SpikeBatch.concatenate([sorter.push(x[5000:9000]), sorter.push(x[9000:]), sorter.flush()], UNIT_IDS)
    _assert_equal(first, _offline(params, recording, 4.0, stop=5000))
    _assert_equal(second, _offline(params, recording, 4.0, start=5000))


def test_bad_blocks_are_refused_and_leave_the_state_alone(params, recording):
    x = recording.read(0, 4000)
    sorter = _sorter(params, recording, threshold=4.0)
    sorter.push(x[:1000])
    bad = x[1000:1100].copy()
    bad[7, 3] = np.nan
    with pytest.raises(NonFiniteBlockError, match="row 7, channel 3"):
        sorter.push(bad)
    with pytest.raises(ValueError, match=r"expected a block \[n, 8\]"):
        sorter.push(x[:10, :5])
    assert sorter.samples_seen == 1000
    rest = SpikeBatch.concatenate([sorter.push(x[1000:]), sorter.flush()], UNIT_IDS)
    assert len(rest) > 0


def test_state_is_bounded(params, recording):
    x = recording.read()
    sorter = _sorter(params, recording, threshold=4.0, min_distance=12)
    for start in range(0, len(x), 997):
        sorter.push(x[start:start + 997])
    assert sorter._held.shape == (TINY_MODEL.window - 1, recording.num_channels)
    assert sorter._tail.shape == (3, 16)
    assert sum(len(v) for v in sorter._peaks._recent.values()) <= 3 * 12
    assert sorter.final_after == TINY_MODEL.window - 1 - TINY_MODEL.anchor + 8 + 1


@pytest.mark.parametrize("ladder", [(8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256), (64, 96, 128, 192, 256)])
def test_a_plan_covers_every_push_with_ladder_shapes_and_pads_no_more_than_one_block(ladder):
    from esort_jax.online.compute import CALL_COST, BlockCompute

    compute = BlockCompute.__new__(BlockCompute)  # only the ladder matters for planning
    compute.sizes, compute._plans = ladder, {}
    for steps in range(1, 3 * ladder[-1] + 5):
        plan = compute.plan(steps)
        assert sum(valid for _, valid in plan) == steps
        assert all(size in ladder and 1 <= valid <= size for size, valid in plan)
        assert all(size == valid for size, valid in plan[:-1])  # only the last piece is padded
        one_pad = min(s for s in ladder if s >= steps % ladder[-1]) if steps % ladder[-1] else 0
        worst = (steps // ladder[-1]) * (ladder[-1] + CALL_COST) + (one_pad + CALL_COST if one_pad else 0)
        assert sum(size + CALL_COST for size, _ in plan) <= worst  # never dearer than padding up
