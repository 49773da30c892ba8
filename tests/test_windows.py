import logging

import numpy as np
import pytest
from _tiny import FS, tiny_recording

from esort_jax import ArrayTraces, Recording, Sorting
from esort_jax.config import ConfigError, from_dict
from esort_jax.windows import (
    LabelError,
    WindowConfig,
    balanced_windows,
    make_windows,
    positive_starts,
    window_labels,
)

W, A = 20, 9


def _brute_labels(starts, sorting, anchor, jitter):
    out = np.zeros((len(starts), sorting.num_units), np.uint8)
    for i, s in enumerate(starts):
        for u in range(sorting.num_units):
            out[i, u] = np.any(np.abs(sorting.unit_samples(u) - (s + anchor)) <= jitter)
    return out


def _blank(num_samples=20000, num_channels=4):
    traces = np.zeros((num_samples, num_channels), np.float32)
    positions = np.stack([np.zeros(num_channels), 20.0 * np.arange(num_channels)], 1)
    return Recording(ArrayTraces(traces), FS, positions)


def test_labels_match_brute_force_with_overlaps():
    rng = np.random.default_rng(1)
    # Units 0 and 1 fire 2 samples apart: windows near both are positive for both.
    sorting = Sorting.from_unit_dict({"a": [100, 300, 302], "b": [102, 500], "c": rng.integers(0, 900, 40)}, FS)
    starts = rng.permutation(np.arange(0, 900))[:600]  # unsorted on purpose
    labels = window_labels(starts, sorting, anchor=A, jitter=3)
    np.testing.assert_array_equal(labels, _brute_labels(starts, sorting, A, 3))
    both = window_labels(np.array([100 - A]), sorting, A, 3)
    assert both[0, :2].tolist() == [1, 1]
    assert positive_starts(np.array([50]), A, 2).tolist() == [39, 40, 41, 42, 43]


def test_balanced_all_spikes_sets_are_correct_and_disjoint():
    recording, truth = tiny_recording(seed=3)
    cfg = WindowConfig(jitter=3, validation_fraction=0.2)
    sets = make_windows(recording, truth, cfg, window=W, anchor=A, seed=0)
    train, val = sets.train, sets.validation
    region_stop = int(0.5 * recording.num_samples)
    # Labels are exactly the definition, for every window (train and validation).
    np.testing.assert_array_equal(train.labels, _brute_labels(train.starts, truth, A, 3))
    np.testing.assert_array_equal(val.labels, _brute_labels(val.starts, truth, A, 3))
    # Balanced: one all-negative window per positive window.
    pos = train.labels.any(1)
    assert pos.sum() == (~pos).sum() == sets.report["num_train_positive_windows"]
    # Every start within ±J of an eligible spike is a positive training window.
    fit_stop = sets.validation_span[0]
    eligible = truth.samples[(truth.samples - A - 3 >= 0) & (truth.samples - A + 3 + W <= fit_stop)]
    assert set(positive_starts(eligible, A, 3)) == set(train.starts[pos])
    # Training windows lie in the fit part, validation windows after it, nothing in the eval half.
    assert train.starts.max() + W <= fit_stop <= val.starts.min()
    assert val.starts.max() + W <= region_stop == sets.eval_span[0]
    assert val.num_positive_windows > 0 and len(val) > val.num_positive_windows
    again = make_windows(recording, truth, cfg, window=W, anchor=A, seed=0)
    assert again.train.fingerprint() == train.fingerprint()
    other = make_windows(recording, truth, cfg, window=W, anchor=A, seed=1)
    assert other.train.fingerprint() != train.fingerprint()


def test_k_spikes_per_unit_prefix_and_true_negatives():
    recording, truth = tiny_recording(seed=4)
    k, j = 4, 2
    sets = make_windows(recording, truth, WindowConfig(jitter=j, spikes_per_unit=k), window=W, anchor=A, seed=0)
    kept = sets.kept_spikes
    assert kept.spike_counts().tolist() == [k] * truth.num_units
    for u in range(truth.num_units):  # the first K spikes whose windows fit
        eligible = truth.unit_samples(u)[truth.unit_samples(u) - A - j >= 0]
        np.testing.assert_array_equal(kept.unit_samples(u), eligible[:k])
    prefix_stop = kept.samples.max() - A + j + W
    assert sets.report["negative_span"] == [0, prefix_stop]
    assert sets.train.starts.max() + W <= prefix_stop
    pos = sets.train.labels.any(1)
    assert set(sets.train.starts[pos]) == set(positive_starts(kept.samples, A, j))
    # Negatives are all-negative w.r.t. EVERY spike, including the unkept ones inside the prefix.
    unkept_in_prefix = np.setdiff1d(truth.samples[truth.samples < prefix_stop], kept.samples)
    assert unkept_in_prefix.size > 0
    negatives = sets.train.starts[~pos]
    near = np.abs(truth.samples[None, :] - (negatives[:, None] + A)) <= j
    assert not near.any()
    # A positive window also sees unkept spikes of other units: labels use all spikes.
    np.testing.assert_array_equal(sets.train.labels, _brute_labels(sets.train.starts, truth, A, j))


def test_short_units_policies_are_explicit(caplog):
    recording, truth = tiny_recording(seed=5)
    counts = truth.in_span(0, int(0.45 * recording.num_samples)).spike_counts()
    k = int(counts.min() + counts.max()) // 2  # more than the sparsest unit has
    assert counts.min() < k < counts.max()
    cfg = WindowConfig(jitter=2, spikes_per_unit=k)
    with pytest.raises(LabelError, match=r"fewer than K=\d+ spikes.*unit \d+ \(\d+ spikes\)"):
        make_windows(recording, truth, cfg, window=W, anchor=A, seed=0)
    with caplog.at_level(logging.WARNING):
        dropped = make_windows(
            recording, truth, WindowConfig(jitter=2, spikes_per_unit=k, short_units="drop"), window=W, anchor=A, seed=0
        )
    assert "dropping" in caplog.text
    short = dropped.report["short_units"]["unit_ids"]
    assert short and set(dropped.unit_ids.tolist()) == set(truth.unit_ids.tolist()) - set(short)
    assert dropped.train.num_units == len(dropped.unit_ids)
    kept_all = make_windows(
        recording, truth, WindowConfig(jitter=2, spikes_per_unit=k, short_units="keep_all"), window=W, anchor=A, seed=0
    )
    assert kept_all.num_units == truth.num_units
    assert kept_all.report["short_units"]["unit_ids"] == short
    short_index = list(truth.unit_ids).index(short[0])
    assert 0 < kept_all.kept_spikes.spike_counts()[short_index] < k


def test_eval_span_is_never_touched():
    recording, truth = tiny_recording(seed=6)
    T = recording.num_samples
    eval_span = (T // 4, T // 2)  # in the middle of the training region
    sets = make_windows(
        recording, truth, WindowConfig(jitter=3), window=W, anchor=A, seed=0,
        train_span=(0, 3 * T // 4), eval_span=eval_span,
    )
    for ws in (sets.train, sets.validation):
        overlaps = (ws.starts < eval_span[1]) & (ws.starts + W > eval_span[0])
        assert not overlaps.any()
    assert sets.train.starts.max() > eval_span[1]  # windows on both sides of the hole


def test_bad_inputs_have_clear_errors():
    recording = _blank()
    good = Sorting.from_unit_dict({7: [1000, 2000], 8: [1500]}, FS)
    with pytest.raises(ConfigError, match=r"windows\.spikes_per_unit: K must be >= 1"):
        from_dict(WindowConfig, {"spikes_per_unit": 0}, "windows")
    with pytest.raises(ConfigError, match=r"windows\.train_fraction"):
        from_dict(WindowConfig, {"train_fraction": 0.0}, "windows")
    outside = Sorting.from_unit_dict({7: [1000, 20000, 25000]}, FS)
    with pytest.raises(LabelError, match=r"2 spike time\(s\) lie outside .*\[0, 20000\)"):
        make_windows(recording, outside, WindowConfig(), window=W, anchor=A, seed=0)
    with pytest.raises(LabelError, match=r"unknown unit id\(s\) \[9\].*\[7, 8\]"):
        make_windows(recording, good, WindowConfig(units=(7, 9)), window=W, anchor=A, seed=0)
    with pytest.raises(LabelError, match=r"at 30000.0 Hz but the recording is at 32000.0 Hz"):
        make_windows(recording, Sorting.from_unit_dict({1: [5]}, 30000.0), WindowConfig(), window=W, anchor=A, seed=0)
    with pytest.raises(LabelError, match="empty training span"):
        make_windows(recording, good, WindowConfig(), window=W, anchor=A, seed=0, train_span=(100, 110))
    with pytest.raises(LabelError, match="no labelled spike"):
        make_windows(recording, good, WindowConfig(train_fraction=0.04), window=W, anchor=A, seed=0)
    with pytest.raises(ConfigError, match=r"windows\.jitter"):
        make_windows(recording, good, WindowConfig(jitter=12), window=W, anchor=A, seed=0)
    # units given as strings (from a config file) select integer ids
    sets = make_windows(recording, good, WindowConfig(units=("8",), validation_fraction=0.0), window=W, anchor=A, seed=0)
    assert sets.unit_ids.tolist() == [8] and len(sets.validation) == 0


def test_balanced_windows_caps_size():
    recording, truth = tiny_recording(seed=7)
    ws = balanced_windows(truth, (0, recording.num_samples), window=W, anchor=A, jitter=0, seed=0, max_windows=50)
    assert len(ws) <= 50 and 0 < ws.num_positive_windows < len(ws)
    np.testing.assert_array_equal(ws.labels, _brute_labels(ws.starts, truth, A, 0))


@pytest.mark.parametrize("ids,message", [
    ([3, 3, 4], r"unit ids are not unique: \[3\] name more than one unit"),
    (["a", "b", "a"], r"unit ids are not unique: \['a'\]"),
    ([np.nan, 1.0, 2.0], "unit ids include NaN"),
])
def test_unit_ids_must_name_one_unit_each(ids, message):
    """Labels whose ids cannot tell units apart are refused before any window is drawn; other
    ids (negative, float, text) are only names and work like any other."""
    recording, truth = tiny_recording(seed=0)
    relabel = lambda ids: Sorting(truth.samples, truth.unit_indices, np.asarray(ids), FS)  # noqa: E731
    with pytest.raises(LabelError, match=message):
        make_windows(recording, relabel(ids), WindowConfig(jitter=3), window=20, anchor=9, seed=0)
    base = make_windows(recording, truth, WindowConfig(jitter=3), window=20, anchor=9, seed=0)
    for names in ([-1, -7, -3], [0.5, 1.5, 2.5], ["x", "y", "z"]):
        other = make_windows(recording, relabel(names), WindowConfig(jitter=3), window=20, anchor=9, seed=0)
        assert other.unit_ids.tolist() == names and other.train.fingerprint() == base.train.fingerprint()


def test_label_columns_must_be_positions_of_units():
    """window_labels / balanced_windows take positions into unit_ids: a negative one labelled the
    last unit silently (numpy indexing); now it is refused, as are positions past N and repeats."""
    _, truth = tiny_recording(seed=0)
    starts = truth.samples[:5] - A
    np.testing.assert_array_equal(window_labels(starts, truth, A, 0, np.array([2]))[:, 0],
                                  window_labels(starts, truth, A, 0)[:, 2])
    for columns, message in (([-1], r"unit_indices \[-1\] are not positions of the 3 units"),
                             ([3], r"unit_indices \[3\] are not positions"),
                             ([0.0], "must be integer positions"), ([1, 1], "list a unit twice")):
        with pytest.raises(LabelError, match=message):
            window_labels(starts, truth, A, 0, np.array(columns))
    with pytest.raises(LabelError, match=r"\[-1\] are not positions"):
        balanced_windows(truth, (0, 1000), window=W, anchor=A, jitter=0, seed=0, unit_indices=np.array([-1]))
