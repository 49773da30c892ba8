"""Label accounting (esort_jax.accounting), label_mode 'k_only' (windows), early stopping (train)
and the k_only threshold rule (threshold): what each counts, checked against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from esort_jax.accounting import ACCOUNTING_KEYS, accounting, label_noise, training_labels
from esort_jax.config import ConfigError
from esort_jax.pipeline import PipelineConfig, choose, fit, label_accounting
from esort_jax.recording import Sorting
from esort_jax.threshold import fold_split, heldout_recall_threshold
from esort_jax.train import TrainConfig, early_stop
from esort_jax.windows import WindowConfig, make_windows
from tests._tiny import TINY_MODEL, fast_compile, tiny_recording  # noqa: F401  (fixture)

W, A, J = TINY_MODEL.window, TINY_MODEL.anchor, 3


@pytest.fixture(scope="module")
def data():
    return tiny_recording(duration_s=1.5, rate_hz=60.0, seed=2)


def _windows(data, mode, k=3):
    recording, truth = data
    config = WindowConfig(jitter=J, spikes_per_unit=k, label_mode=mode, short_units="keep_all")
    return make_windows(recording, truth, config, window=W, anchor=A, seed=0)


def test_complete_span_counts_every_spike_the_negatives_avoided(data):
    _, truth = data
    windows = _windows(data, "complete_span")
    facts = training_labels(windows, truth)
    first, stop = windows.report["negative_starts"]
    # Brute force: a spike was read if a candidate negative start's anchor, or a training
    # window's anchor, lies within ±J of it.
    anchors = np.concatenate([np.arange(first, stop) + A, windows.train.starts + A])
    read = [np.any(np.abs(anchors - s) <= J) for s in truth.samples]
    assert facts["train_labels_spikes"] == int(np.sum(read))
    assert facts["positive_spikes"] == windows.kept_spikes.num_spikes == 3 * truth.num_units
    assert facts["train_labels_spikes"] > facts["positive_spikes"]  # "K per unit" uses more labels
    span = windows.report["negative_span"]
    assert facts["train_labelled_seconds"] == pytest.approx((span[1] - span[0]) / truth.sampling_frequency)
    assert label_noise(windows, truth)["noisy_negative_windows"] == 0  # complete labels: no noise


def test_k_only_uses_only_the_k_spikes_and_its_label_noise_is_measured(data):
    _, truth = data
    windows = _windows(data, "k_only", k=6)
    facts = training_labels(windows, truth)
    assert facts["train_labels_spikes"] == facts["positive_spikes"] == 6 * truth.num_units
    assert facts["train_labelled_seconds"] == 0.0
    kept = windows.kept_spikes
    negatives = windows.train.starts[~windows.train.labels.any(axis=1)]
    # Negatives avoid the known spikes only; some hold an unlabelled one (60 Hz x 3 units).
    assert all(np.min(np.abs(kept.samples - (n + A))) > J for n in negatives)
    noise = label_noise(windows, truth)
    brute = sum(bool(np.any(np.abs(truth.samples - (n + A)) <= J)) for n in negatives)
    assert noise["noisy_negative_windows"] == brute > 0
    assert noise["negative_label_noise"] == pytest.approx(brute / negatives.size)


def test_accounting_adds_the_validation_part_only_when_something_read_it():
    facts = {"train_labels_spikes": 100, "train_labelled_seconds": 2.0, "validation_span_spikes": 40,
             "validation_span_seconds": 0.5, "positive_spikes": 20}
    sweep = accounting(facts, {"rule": "validation_sweep", "labels": 30}, train_steps=7, early_stopping=False)
    assert [sweep[k] for k in ACCOUNTING_KEYS] == [100, 2.5, 30, 7]
    stopped = accounting(facts, {"rule": "validation_sweep", "labels": 30}, train_steps=7, early_stopping=True)
    assert stopped["labels_used_spikes"] == 140 and stopped["labelled_seconds"] == 2.5
    fixed = accounting(facts, {}, train_steps=7, early_stopping=False)
    assert fixed["threshold_labels"] == 0 and fixed["labelled_seconds"] == 2.0
    cv = accounting(facts, {"rule": "k_only_cv", "labels": 20, "fold_train_steps": [30, 31]}, train_steps=7,
                    early_stopping=False)
    assert cv["labelled_seconds"] == 2.0 and cv["label_accounting"]["validation_labels_read_by"] == []
    assert cv["train_steps"] == 7 and cv["label_accounting"]["threshold_train_steps"] == 61  # the fold networks
    assert sweep["label_accounting"]["threshold_train_steps"] == fixed["label_accounting"]["threshold_train_steps"] == 0


def test_early_stop_counts_steps_since_the_best_validation_loss():
    config = TrainConfig(early_stopping_patience_steps=10)
    history = [{"step": 5 * (i + 1), "val_loss": v} for i, v in enumerate([0.5, 0.4, 0.41, 0.42])]
    assert not early_stop(history[:3], config)  # best at step 10, now 15
    assert early_stop(history, config)  # 20 - 10 >= 10
    assert not early_stop(history, TrainConfig())  # off
    # min_delta: 0.4 does not improve on 0.5 by more than 0.2, so the best stays at step 5
    assert early_stop(history[:3], TrainConfig(early_stopping_patience_steps=10, early_stopping_min_delta=0.2))


def test_fold_split_alternates_each_units_spikes():
    sorting = Sorting.from_unit_dict({"a": [10, 20, 30, 40, 50], "b": [15, 25]}, 32000.0)
    (train0, held0), (train1, held1) = fold_split(sorting)
    assert held0.samples.tolist() == [10, 15, 30, 50] and held1.samples.tolist() == [20, 25, 40]
    assert train0.samples.tolist() == held1.samples.tolist()


def test_heldout_recall_rule_takes_the_largest_threshold_keeping_the_fraction():
    curves = [{"threshold": [0.5, 1.0, 1.5, 2.0], "recall_pooled": [1.0, 0.95, 0.8, 0.2], "heldout_spikes": 10,
               "num_spikes": [9, 8, 7, 2]},
              {"threshold": [0.5, 1.0, 1.5, 2.0], "recall_pooled": [0.9, 0.9, 0.85, 0.1], "heldout_spikes": 10,
               "num_spikes": [9, 9, 8, 1]}]
    best, curve = heldout_recall_threshold(curves, 0.9)  # pooled 0.95, 0.925, 0.825, 0.15; target 0.855
    assert best == 1.0 and curve["labels"] == 20 and curve["rule"] == "k_only_cv"
    assert heldout_recall_threshold(curves, 0.85)[0] == 1.5
    silent = [dict(c, recall_pooled=[0.0] * 4) for c in curves]
    assert heldout_recall_threshold(silent, 0.9)[0] == 0.5


def test_k_only_pipeline_reports_its_labels_and_chooses_from_them(data):
    recording, truth = data
    config = PipelineConfig(model=TINY_MODEL, windows=WindowConfig(jitter=J, spikes_per_unit=4, label_mode="k_only"),
                            train=TrainConfig(epochs=3, batch_size=64, progress=False))
    fitted = fit(recording, truth, config, seed=0, truth=truth)
    threshold, curve = choose(fitted, recording, truth, config)
    assert curve["rule"] == "k_only_cv" and curve["labels"] == 4 * truth.num_units and threshold in curve["threshold"]
    keys = label_accounting(fitted, curve, config)
    assert keys["labels_used_spikes"] == 4 * truth.num_units and keys["labelled_seconds"] == 0.0
    assert keys["train_steps"] == fitted.train_result.steps == fitted.train_result.history[-1]["step"]
    assert keys["label_accounting"]["negative_windows"] > 0
    with pytest.raises(ConfigError, match="early_stopping"):
        config.replace(train=TrainConfig(early_stopping_patience_steps=5)).validate()


def test_max_steps_sets_the_epochs_and_early_stopping_ends_the_run(data):
    from esort_jax.batches import steps_per_epoch
    from esort_jax.train import init_model, train

    recording, truth = data
    windows = make_windows(recording, truth, WindowConfig(jitter=J), window=W, anchor=A, seed=0)
    each = steps_per_epoch(len(windows.train), 64)
    model = init_model(recording.num_channels, windows.num_units, TINY_MODEL, seed=0)
    # min_delta 10: no epoch ever improves on the first, so the run stops 2 epochs later.
    config = TrainConfig(batch_size=64, progress=False, max_steps=100 * each, early_stopping_patience_steps=2 * each,
                         early_stopping_min_delta=10.0)
    result = train(model, recording, windows, config)
    assert result.stopped_early and result.finished and result.epochs_completed == 3
    assert result.steps == 3 * each == result.history[-1]["step"]


@pytest.mark.parametrize("data_on_device", ["always", "never"])
def test_max_steps_is_exact_when_it_ends_inside_an_epoch(data, data_on_device):
    from esort_jax.batches import steps_per_epoch
    from esort_jax.train import init_model, learning_rate_schedule, train

    recording, truth = data
    windows = make_windows(recording, truth, WindowConfig(jitter=J), window=W, anchor=A, seed=0)
    each = steps_per_epoch(len(windows.train), 64)
    assert each >= 2, "the test needs an epoch of several steps to end one inside"
    budget = 2 * each + 1  # two whole epochs and one step of the third
    model = init_model(recording.num_channels, windows.num_units, TINY_MODEL, seed=0)
    config = TrainConfig(batch_size=64, progress=False, max_steps=budget, data_on_device=data_on_device)
    result = train(model, recording, windows, config)
    assert result.steps == budget == result.history[-1]["step"]
    assert [h["step"] for h in result.history] == [each, 2 * each, budget] and result.finished
    cosine = learning_rate_schedule(TrainConfig(max_steps=budget, schedule="cosine", epochs=3), each)
    assert float(cosine(budget)) == pytest.approx(0.0, abs=1e-9)  # the decay ends where the budget does


def test_label_reduction_is_also_read_against_the_labels_used(tmp_path):
    from esort_jax.report.curves import reduction_by_axis, summarise
    from esort_jax.report.plots import label_efficiency_figures

    rows = []
    for seed in (0, 1):
        for k, used, t, s in ((2, 300, 0.70, 0.40), (5, 600, 0.85, 0.70), (10, 1000, 0.92, 0.85)):
            for arm, acc in (("transfer", t), ("scratch", s)):
                rows.append({"seed": seed, "k": k, "arm": arm, "accuracy_pooled": acc, "labels_used_spikes": used,
                             "labelled_seconds": used / 100, "train_steps": 10 * k})
    out = summarise(rows, ("transfer", "scratch"), "accuracy_pooled", None)
    by_labels = out["label_reduction_by"]["labels_used_spikes"]
    # transfer reaches 0.85 at K=5 (600 labels); scratch at K=10 (1000 labels): 1000/600, not 10/5
    level = next(e for e in by_labels["levels"] if e["at_k"] == 5)
    assert level["ratio"] == pytest.approx(1000 / 600)
    assert out["label_reduction"]["levels"][1]["ratio"] == pytest.approx(2.0)
    flat = [dict(r, labelled_seconds_mean=0.0) for r in out["summary"]]  # k_only: no span labelled
    assert reduction_by_axis(flat, "accuracy_pooled", "labelled_seconds")["levels"] == []
    figures = label_efficiency_figures({**out, "seeds": [0, 1], "metric": "accuracy_pooled"}, tmp_path)
    assert {"label_efficiency_labels", "label_reduction_labels_used_spikes"} <= set(figures)
