"""Issue 17, item 0: the real-data workflow's training labels (dropped units' spikes are never
negatives) and the SNR-binned scores (SpikeForest's convention)."""

from __future__ import annotations

import numpy as np
import pytest

from esort_jax.pipeline import PipelineConfig
from esort_jax.realdata.labeller import load_labels
from esort_jax.realdata.quality import QualityFilter, select_units
from esort_jax.realdata.workflow import _training_labels
from esort_jax.recording import Sorting
from esort_jax.windows import WindowConfig, make_windows
from tests._tiny import TINY_MODEL, tiny_recording

J = 3


def _labels_with_a_sparse_unit():
    recording, truth = tiny_recording(duration_s=1.5, rate_hz=60.0, seed=4)
    sparse = truth.unit_indices == 2
    keep = ~sparse | (np.cumsum(sparse) <= 8)  # unit 2: 8 spikes, under min_spikes
    sorting = Sorting(truth.samples[keep], truth.unit_indices[keep], truth.unit_ids, truth.sampling_frequency)
    return recording, load_labels(sorting, duration_s=recording.duration_s)


@pytest.mark.parametrize("clear", [True, False])
def test_dropped_units_spikes_are_never_negatives_unless_asked(clear):
    recording, labels = _labels_with_a_sparse_unit()
    end = recording.num_samples // 2
    selection = select_units(labels, (0, end), QualityFilter(min_spikes=20))
    assert selection.kept_ids == [0, 1]
    config = PipelineConfig(model=TINY_MODEL, windows=WindowConfig(jitter=J))
    fit_labels, fit_config = _training_labels(labels, selection, config, clear)
    windows = make_windows(recording, fit_labels, fit_config.windows, window=TINY_MODEL.window,
                           anchor=TINY_MODEL.anchor, seed=0, train_span=(0, end))
    assert windows.unit_ids.tolist() == [0, 1]  # the network learns the kept units only
    negatives = windows.train.starts[~windows.train.labels.any(axis=1)] + TINY_MODEL.anchor
    dropped = labels.sorting.unit_samples(2)
    hits = sum(bool(np.any(np.abs(negatives - s) <= J)) for s in dropped)
    # With clear=True no negative window holds a dropped unit's spike; before (clear=False)
    # nothing kept them out (8 spikes x 7 windows among the negatives of this stretch).
    assert (hits == 0) if clear else (fit_labels.num_units == 2)


def test_snr_is_the_mean_waveform_peak_over_the_mad_noise():
    from esort_jax.report.snr import mean_snippets, snr_summary, unit_snr

    recording, truth = tiny_recording(duration_s=1.5, rate_hz=20.0, amplitude=8.0, seed=1)
    snr = unit_snr(recording, truth, noise_seconds=1.0)
    # unit-variance noise plus waveforms of peak 8 on the main channel: SNR close to 8
    assert snr.shape == (3,) and np.all((snr > 6.5) & (snr < 10.0)), snr
    same, channels = unit_snr(recording, truth, noise_seconds=1.0, with_channels=True)
    assert np.array_equal(same, snr) and channels.tolist() == [0, 3, 6]  # unit u's main channel is 3u
    # the snippets are read about `chunk` samples at a time: the same means as one read per spike
    spikes = {u: truth.unit_samples(u)[1:-1] for u in range(3)}
    one_read = mean_snippets(recording, spikes, 32, 64, chunk=10**9)
    per_spike = {u: np.mean([recording.read(int(t) - 32, int(t) + 64) for t in v], axis=0) for u, v in spikes.items()}
    for chunk in (1, 500, 10**9):  # a read per spike, a few per second, one for all
        chunked = mean_snippets(recording, spikes, 32, 64, chunk=chunk)
        for u in spikes:
            np.testing.assert_allclose(chunked[u], per_spike[u], rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(chunked[u], one_read[u])
    per_unit = {"unit_ids": [2, 0, 1], "accuracy": [0.9, 0.5, None]}
    summary = snr_summary(per_unit, np.array([9.0, 3.0, 20.0]), [0, 1, 2])
    # units 2 (SNR 20, acc 0.9) and 0 (SNR 9, acc 0.5) are above the cut; unit 1 is silent (None)
    assert summary["accuracy_mean_snr_above"] == pytest.approx(0.7) and summary["n_units_snr_above"] == 2
    assert summary["well_detected_snr_above"] == 1
    low = summary["snr_bins"][0]
    assert (low["snr_min"], low["snr_max"], low["n_units"]) == (0.0, 5.0, 0)


def test_label_flags_find_oversplit_dropped_and_missed_units():
    from esort_jax.realdata.diagnose import label_flags, oracle_threshold

    fs = 32000.0
    t0, t1, t2 = np.arange(10, 100) * 1000, np.arange(10, 100) * 1000 + 333, np.arange(10, 100) * 1000 + 666
    truth = Sorting.from_unit_dict({"a": t0, "b": t1, "c": t2}, fs)
    # labeller: truth a split in two (alternate spikes), truth b as one unit (dropped by the filter),
    # truth c not found
    labels = Sorting.from_unit_dict({10: t0[::2] + 1, 11: t0[1::2], 12: t1 - 2}, fs)
    flags = label_flags(labels, np.array([True, True, False]), truth, (0, 200_000))
    assert flags["oversplit"] == [True, False, False] and flags["labeller_units"][0] == [10, 11]
    assert flags["paired_unit"][1] == 12 and flags["paired_dropped"] == [False, True, False]
    assert flags["missed"] == [False, False, True]
    scores = np.where(np.arange(labels.num_spikes) % 3 == 0, 0.6, 2.0).astype(np.float32)
    best = oracle_threshold(labels, scores, truth, (0, 200_000), [0.5, 1.0])
    assert [c["threshold"] for c in best["curve"]] == [0.5, 1.0] and best["threshold"] == 0.5


def test_break_even_length_solves_the_two_lines(tmp_path):
    from esort_jax.report.breakeven import PipelineTimes, break_even_s, fit_linear, plot_break_even

    labeller = fit_linear([(60.0, 320.0), (180.0, 920.0)])  # 5 s per s of data, 20 s start-up
    assert (labeller.intercept_s, labeller.slope) == pytest.approx((20.0, 5.0))
    times = PipelineTimes(labeller=labeller, train_span_s=30.0, pretrain_s=0.0, finetune_s=60.0, threshold_s=5.0,
                          sort_s_per_s=0.25)
    star = break_even_s(times)
    assert star == pytest.approx(30.0 + 65.0 / 4.75)
    assert times.total(star) == pytest.approx(labeller.at(star))  # equal there, E-Sort ahead beyond
    assert times.total(2 * star) < labeller.at(2 * star)
    slow = PipelineTimes(labeller=fit_linear([(60.0, 6.0)]), train_span_s=30.0, pretrain_s=0.0, finetune_s=1.0,
                         threshold_s=0.0, sort_s_per_s=0.25)
    assert break_even_s(slow) is None  # a labeller faster per second than E-Sort: never
    plot_break_even({"sorter": times}, tmp_path / "b.png", measured=[{"length_s": 60, "seconds": 320}])
    assert (tmp_path / "b.png").stat().st_size > 0


def test_the_esort_generator_pair_has_one_set_of_spikes_and_the_drift_the_labels_never_see(tmp_path, monkeypatch):
    """benchmarks/never_worse.py --generator esort: static and drifting recordings of this
    project's synthesiser with the same spike trains; the scored span drifts the other way
    from the training span (as with SpikeInterface's generator); the pair is cached."""
    import types

    from benchmarks import never_worse

    args = types.SimpleNamespace(channels=4, generator="esort")
    monkeypatch.setattr(never_worse, "make_esort_recordings", _count(never_worse.make_esort_recordings))
    recordings, truth, drift = never_worse.make_recordings(0, args, tmp_path)
    again, truth_again, drift_again = never_worse.make_recordings(0, args, tmp_path)
    assert never_worse.make_esort_recordings.calls == 1 and drift_again == drift  # read back, not rebuilt
    assert truth.get_num_units() == truth_again.get_num_units() > 0
    assert recordings["static"].get_num_channels() == 4 and recordings["drifting"].get_num_samples() == 40 * 32000
    train, rest = sorted(drift["train_um"], key=abs), sorted(drift["rest_um"], key=abs)
    assert train[0] == pytest.approx(0.0, abs=1e-6) and rest[0] == pytest.approx(0.0, abs=1e-6)
    assert abs(train[1]) == pytest.approx(15.0) and rest[1] == pytest.approx(-train[1])  # 0..±15, then 0..∓15 µm


def _count(function):
    def counted(*args, **kwargs):
        counted.calls += 1
        return function(*args, **kwargs)
    counted.calls = 0
    return counted


def test_the_span_table_splits_the_gap_into_more_data_and_what_esort_lost():
    """benchmarks/never_worse.py: the labeller on the whole recording against its run on the
    training span only (E-Sort's teacher), both scored on the training span, and E-Sort against
    that teacher; one converged row per step cap."""
    from benchmarks import never_worse

    rows = []
    scores = [(0.86, 0.86, 0.83, 0.82), (0.80, 0.82, 0.80, 0.81)]
    for seed, (whole_rest, whole_train, teacher, motion) in enumerate(scores):
        rows += [{"seed": seed, "kind": "static", "arm": "labeller", "accuracy_mean": whole_rest},
                 {"seed": seed, "kind": "static", "arm": "labeller_training_span", "accuracy_mean": whole_train},
                 {"seed": seed, "kind": "static", "arm": "teacher", "accuracy_mean": teacher},
                 {"seed": seed, "kind": "static", "arm": "motion", "accuracy_mean": motion,
                  **({"training_span": {"accuracy_mean": 0.84}} if seed == 0 else {})}]
    rows.append({"seed": 0, "kind": "static", "arm": "converged", "max_steps": 20000, "accuracy_mean": 0.5})
    rows.append({"seed": 0, "kind": "static", "arm": "converged", "accuracy_mean": 0.4})  # before the cap was recorded
    table = never_worse.span_table(rows, "static").splitlines()
    head = [c.strip() for c in table[0].strip("|").split("|")]
    cells = dict(zip(head, (c.strip() for c in table[2].strip("|").split("|"))))
    assert cells["seeds"] == "2"
    assert cells["whole − teacher, training span"] == "0.025 ± 0.007"  # (0.03 + 0.02) / 2
    assert cells["motion − teacher"] == "0.000 ± 0.014"  # -0.01 and +0.01
    assert cells["converged (≤ 20000 steps) − teacher"] == "-0.330 ± 0.000"  # seed 0 only
    assert cells["converged (≤ 3000 steps) − teacher"] == "-0.430 ± 0.000"
    # E-Sort on the span it learned from, paired with its teacher there (only rows that hold it)
    assert cells["motion, training span"] == "0.840 ± 0.000"
    assert cells["motion − teacher, training span"] == "0.010 ± 0.000"  # seed 0: 0.84 - 0.83
    assert "converged (≤ 3000 steps), training span" not in cells
    assert "no teacher rows" in never_worse.span_table(rows[3:4], "static")


def test_rows_already_measured_are_keyed_by_generator_channels_and_step_cap():
    import json

    from benchmarks import never_worse

    lines = [json.dumps(r) for r in (
        {"seed": 0, "kind": "static", "arm": "motion", "generator": "esort", "channels": 64},
        {"seed": 0, "kind": "static", "arm": "converged", "generator": "esort", "channels": 384},
        {"seed": 0, "kind": "static", "arm": "converged", "generator": "esort", "channels": 384, "max_steps": 20000},
        {"seed": 1, "kind": "drifting", "arm": "fixed"},  # SpikeInterface's generator, before channels were recorded
    )] + [""]
    assert never_worse.done_rows(lines, "esort", 384) == {(0, "static", "converged", 3000),
                                                          (0, "static", "converged", 20000)}
    assert never_worse.done_rows(lines, "esort", 64) == {(0, "static", "motion", None)}
    assert never_worse.done_rows(lines, "spikeinterface", 96) == {(1, "drifting", "fixed", None)}


def test_spike_misses_split_a_units_missed_spikes_into_crowded_to_a_neighbour_and_undetected():
    from esort_jax.realdata.diagnose import spike_misses

    fs = 32000.0
    a = np.arange(10, 100) * 1000
    # b 0.6 ms after a's first 20 (crowded, outside the 0.4 ms tolerance); c far; d never sorted
    b, c, d = a[:20] + 20, a[:20] + 500, a[50:60] + 100
    truth = Sorting.from_unit_dict({"a": a, "b": b, "c": c, "d": d}, fs)
    locations = np.array([[0.0, 0.0], [0.0, 40.0], [0.0, 500.0], [0.0, 1000.0]])
    missed = np.r_[0:5, 40:43]  # five crowded spikes, three isolated ones
    sorting = Sorting.from_unit_dict({
        10: np.delete(a, missed),
        11: np.sort(np.r_[b, a[:3]]),   # the neighbour takes a's spikes 0-2
        12: np.sort(np.r_[c, a[4]]),    # a far unit firing at a's spike 4 is not a neighbour
    }, fs)
    out = spike_misses(sorting, truth, (0, 200_000), locations, units=[0])
    assert (out["units"], out["spikes"], out["crowded"]) == (1, 90, 20)
    assert (out["missed"], out["missed_crowded"], out["to_neighbour"], out["undetected"]) == (8, 5, 3, 5)
    assert out["missed_rate_crowded"] == pytest.approx(5 / 20) and out["missed_rate_isolated"] == pytest.approx(3 / 70)
    everyone = spike_misses(sorting, truth, (0, 200_000), locations)
    assert everyone["unit_lost"] == 10 and everyone["spikes"] == 90 + 20 + 20
    assert everyone["missed"] == 8  # b and c lose nothing
    with pytest.raises(ValueError, match="unit_locations has 3 rows for 4 truth units"):
        spike_misses(sorting, truth, (0, 200_000), locations[:3])


def test_the_miss_table_pools_counts_over_recordings_per_method_and_span():
    from benchmarks import never_worse

    def misses(spikes, missed, crowded, missed_crowded, to_neighbour):
        return {"units": 2, "spikes": spikes, "missed": missed, "crowded": crowded, "missed_crowded": missed_crowded,
                "to_neighbour": to_neighbour, "undetected": missed - to_neighbour, "unit_lost": 0}

    rows = [{"seed": seed, "kind": "static", "arm": "motion",
             "misses": {"rest": misses(100, 4, 10, 2, 1), "training_span": misses(100, 2, 10, 1, 0)}}
            for seed in (0, 1)]
    rows.append({"seed": 0, "kind": "static", "arm": "labeller_training_span",
                 "misses": {"training_span": misses(1, 1, 1, 1, 1)}})
    rows.append({"seed": 0, "kind": "drifting", "arm": "motion", "misses": {"rest": misses(1, 1, 1, 1, 1)}})
    entries = never_worse.row_misses(rows, "static")
    assert [(m, s) for m, s, _ in entries] == [("motion", "rest"), ("motion", "training_span")] * 2
    table = never_worse.miss_table(entries).splitlines()
    head = [c.strip() for c in table[0].strip("|").split("|")]
    rest = dict(zip(head, (c.strip() for c in table[2].strip("|").split("|"))))
    assert [rest[k] for k in ("method", "span", "recordings", "units", "spikes")] == ["motion", "rest", "2", "4", "200"]
    assert rest["missed"] == "4.00%" and rest["missed, crowded spikes"] == "20.00%"      # 8 of 200; 4 of 20
    assert rest["missed, isolated spikes"] == "2.22%" and rest["missed to a neighbouring unit"] == "1.00%"  # 4 of 180
    assert len(table) == 4  # the training span's row; the labeller's training-span run is left out


def test_collision_arms_change_only_the_augmentation():
    """The collisions arm is the fixed arm with the augmentation fixed in COLLISIONS."""
    import dataclasses

    from benchmarks import never_worse

    ten_epochs = never_worse.ten_epochs_training()
    recording, labels, fixed = never_worse.arm_options("fixed", "rec", "truth", "labels", seed=3)
    _, _, collisions = never_worse.arm_options("collisions", "rec", "truth", "labels", seed=3)
    assert (recording, labels) == ("rec", "labels") and fixed["train"] == ten_epochs
    assert collisions["train"] == dataclasses.replace(ten_epochs, **never_worse.COLLISIONS)
    assert collisions["train"].collision_probability > 0
    assert {k: v for k, v in collisions.items() if k != "train"} == {k: v for k, v in fixed.items() if k != "train"}


def test_augmentation_table_pairs_arms_by_seed():
    from benchmarks import never_worse

    def row(seed, arm, acc, kind="static"):
        return {"seed": seed, "kind": kind, "arm": arm, "accuracy_mean": acc}

    rows = [row(0, "labeller", 0.80), row(1, "labeller", 0.90), row(0, "fixed", 0.70), row(0, "collisions", 0.75),
            row(1, "fixed", 0.85), row(1, "collisions", 0.84), row(2, "collisions", 0.99),  # seed 2: no pair
            row(0, "motion", 0.7, kind="drifting")]
    table = never_worse.augmentation_table(rows, "static").splitlines()
    assert len(table) == 3 and table[2].startswith("| fixed → collisions | 2 | 0.775 ± 0.106 | 0.795 ± 0.064 |")
    assert "| +0.050, -0.010 |" in table[2] and table[2].endswith("| 0.020 ± 0.042 | +0.050, -0.010 | -0.055 ± 0.007 |")
    assert never_worse.augmentation_table(rows, "drifting") == ""


def test_rows_of_another_training_span_are_not_counted_as_done():
    import json

    from benchmarks import never_worse

    lines = [json.dumps({"seed": 0, "kind": "static", "arm": "fixed", "generator": "esort", "channels": 64}),
             json.dumps({"seed": 1, "kind": "static", "arm": "fixed", "generator": "esort", "channels": 64,
                         "train_s": 30.0})]
    assert never_worse.done_rows(lines, "esort", 64) == {(0, "static", "fixed", None)}
    assert never_worse.done_rows(lines, "esort", 64, 30.0) == {(1, "static", "fixed", None)}
    try:
        never_worse.set_training_span(30.0)
        assert never_worse.TRAIN_S == 30.0
    finally:
        never_worse.set_training_span(20.0)


def test_regularised_motion_arms_change_only_the_training(monkeypatch):
    """motion_decay and motion_converged are the motion arm with one training setting changed."""
    import dataclasses

    from benchmarks import never_worse
    from esort_jax.realdata import motion, preprocess

    monkeypatch.setattr(preprocess, "preprocess", lambda recording, config: f"preprocessed {recording}")
    monkeypatch.setattr(motion, "correct_motion", lambda recording, config: (f"corrected {recording}", None))
    options = {arm: never_worse.arm_options(arm, "rec", "truth", "labels", seed=3, max_steps=7630)
               for arm in ("motion", "motion_decay", "motion_converged")}
    assert {arm: o[0] for arm, o in options.items()} == dict.fromkeys(options, "corrected preprocessed rec")
    ten_epochs = never_worse.ten_epochs_training()
    plain = options["motion"][2]
    assert plain["train"] == ten_epochs and ten_epochs.epochs == 10 and not ten_epochs.early_stopping_patience_steps
    assert options["motion_decay"][2]["train"] == dataclasses.replace(ten_epochs, optimizer="adamw", weight_decay=1e-2)
    converged = options["motion_converged"][2]["train"]
    assert converged.max_steps == 7630 and converged.early_stopping_patience_steps == 300
    for arm in ("motion_decay", "motion_converged"):
        assert {k: v for k, v in options[arm][2].items() if k != "train"} == {k: v for k, v in plain.items() if k != "train"}


def test_unduplicated_rows_follow_their_arm_in_the_tables():
    from benchmarks import never_worse

    rows = [{"arm": "motion+dedup"}, {"arm": "motion_converged", "max_steps": 7630},
            {"arm": "motion_converged+dedup", "max_steps": 7630}, {"arm": "motion"}]
    assert [never_worse.arm_label(r) for r in rows] == [
        "motion+dedup", "motion_converged (≤ 7630 steps)", "motion_converged (≤ 7630 steps)+dedup", "motion"]
    assert never_worse._labels(rows, ("motion", "motion_converged")) == [
        "motion", "motion+dedup", "motion_converged (≤ 7630 steps)", "motion_converged (≤ 7630 steps)+dedup"]


def test_converged_arm_without_a_step_cap_is_the_real_data_default(monkeypatch):
    """--converged-max-steps 0: the motion_converged arm trains exactly as sort_real and the sorter
    do by default (CPU_TRAIN), and its rows are told apart from capped ones in tables and reruns."""
    import json

    from benchmarks import never_worse
    from esort_jax.realdata import motion, preprocess
    from esort_jax.realdata.workflow import CPU_TRAIN

    monkeypatch.setattr(preprocess, "preprocess", lambda recording, config: recording)
    monkeypatch.setattr(motion, "correct_motion", lambda recording, config: (recording, None))
    _, _, options = never_worse.arm_options("motion_converged", "rec", "truth", "labels", seed=3, max_steps=0)
    assert options["train"] == CPU_TRAIN
    rows = [{"seed": 0, "kind": "static", "arm": "motion_converged", "max_steps": 0},
            {"seed": 0, "kind": "static", "arm": "motion_converged", "max_steps": 7630},
            {"seed": 0, "kind": "static", "arm": "converged"},  # before the cap was recorded: 3000
            {"seed": 0, "kind": "static", "arm": "motion", "max_steps": None}]
    assert [never_worse.arm_label(r) for r in rows] == [
        "motion_converged (≤ 10 epochs: the default)", "motion_converged (≤ 7630 steps)", "converged (≤ 3000 steps)",
        "motion"]
    lines = [json.dumps({**r, "generator": "esort", "channels": 384}) for r in rows]
    assert never_worse.done_rows(lines, "esort", 384) == {(0, "static", "motion_converged", 0),
                                                          (0, "static", "motion_converged", 7630),
                                                          (0, "static", "converged", 3000),
                                                          (0, "static", "motion", None)}


def test_cause_and_span_tables_hold_the_default_arm():
    """The real-data default's rows (motion_converged without a step cap) appear in the cause and
    span tables, not only in the summary."""
    from benchmarks import never_worse

    flags = {"oversplit": [True, False], "paired_dropped": [False, False], "missed": [False, False]}
    rows = [{"seed": 0, "kind": "static", "arm": "labeller", "accuracy_mean": 0.8, "per_unit_accuracy": [0.5, 0.9],
             "flags": flags},
            {"seed": 0, "kind": "static", "arm": "teacher", "accuracy_mean": 0.7},
            {"seed": 0, "kind": "static", "arm": "labeller_training_span", "accuracy_mean": 0.75},
            {"seed": 0, "kind": "static", "arm": "motion_converged", "max_steps": 0, "accuracy_mean": 0.78,
             "per_unit_accuracy": [0.7, 0.85], "training_span": {"accuracy_mean": 0.72}}]
    cause = never_worse.cause_table(rows, "static").splitlines()
    assert cause[0] == "| units | n | motion_converged (≤ 10 epochs: the default) − labeller |"
    assert cause[2] == "| oversplit by the labeller | 1 | +0.200 |" and cause[5] == "| none of these | 1 | -0.050 |"
    span = never_worse.span_table(rows, "static").splitlines()
    assert "motion_converged (≤ 10 epochs: the default), rest" in span[0]
    assert span[2].endswith("| 0.050 ± 0.000 | 0.080 ± 0.000 | 0.020 ± 0.000 |")  # whole − teacher, arm − teacher, in-sample arm − teacher
