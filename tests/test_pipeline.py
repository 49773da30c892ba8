"""esort_jax.pipeline: the stages in order on tiny data — fit learns the units, the threshold
is chosen before the evaluation span on the labels the network was trained from, the sorted
span is the evaluation span and the scores are the evaluator's."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from esort_jax.config import ConfigError
from esort_jax.evaluate import EvaluationConfig, evaluate, scored_span
from esort_jax.pipeline import PipelineConfig, fit, score, sort_and_evaluate
from esort_jax.train import TrainConfig
from esort_jax.transfer import TransferConfig
from esort_jax.windows import LabelError, WindowConfig
from tests._tiny import TINY_MODEL, fast_compile, tiny_recording  # noqa: F401  (fixture)

CONFIG = PipelineConfig(
    model=TINY_MODEL, windows=WindowConfig(train_fraction=0.6),
    train=TrainConfig(epochs=6, batch_size=64, progress=False),
    evaluation=EvaluationConfig(window_metrics_max=2048),
)


def test_fit_sort_evaluate_learns_tiny_units_and_keeps_eval_span_out():
    recording, truth = tiny_recording(duration_s=1.5, amplitude=10.0)
    fitted = fit(recording, truth, CONFIG, seed=0)
    e0, e1 = fitted.windows.eval_span
    assert fitted.windows.train.starts.max() + TINY_MODEL.window <= e0  # training never sees it
    assert fitted.summary()["epochs"] == 6 and fitted.summary()["num_units"] == 3
    outcome = sort_and_evaluate(fitted, recording, truth, CONFIG)
    assert outcome.threshold_curve["span"][1] <= e0  # the threshold was chosen before the evaluation span
    assert outcome.threshold in EvaluationConfig().thresholds
    metrics = outcome.metrics()
    assert metrics["accuracy_pooled"] > 0.8, metrics
    assert metrics["window_jaccard"] > 0.5, metrics
    assert "precision" not in metrics and metrics["precision_pooled"] > 0.8  # one key per metric
    assert outcome.sort_result.span == (e0, e1)
    again = evaluate(outcome.sort_result.sorting, truth, tolerance_ms=0.4,
                     span=scored_span((e0, e1), window=TINY_MODEL.window, anchor=TINY_MODEL.anchor))
    assert again.accuracy_pooled == metrics["accuracy_pooled"]


def test_threshold_is_chosen_on_the_training_labels_not_the_truth():
    """With labels that lack one unit's spikes in the validation span, the sweep sees what the
    labels say (the curve differs from one chosen against the truth)."""
    recording, truth = tiny_recording(duration_s=1.5, amplitude=10.0)
    fitted = fit(recording, truth, CONFIG, seed=0)
    v0, v1 = fitted.windows.validation_span
    hidden = (truth.unit_indices == 0) & (truth.samples >= v0) & (truth.samples < v1)
    labels = truth.select_spikes(~hidden)
    with_truth = sort_and_evaluate(fitted, recording, truth, CONFIG)
    with_labels = sort_and_evaluate(fitted, recording, truth, CONFIG, labels=labels)
    assert with_labels.threshold_curve["accuracy_pooled"] != with_truth.threshold_curve["accuracy_pooled"]


def test_config_errors_name_the_stage():
    with pytest.raises(ConfigError, match=r"^train\.epochs: must be >= 1"):
        CONFIG.replace(train=dataclasses.replace(CONFIG.train, epochs=0)).validate()
    with pytest.raises(ConfigError, match=r"^transfer\.checkpoint: init='transfer' needs"):
        CONFIG.replace(transfer=TransferConfig(init="transfer")).validate()
    with pytest.raises(ConfigError, match=r"^evaluation\.tolerance_ms"):
        CONFIG.replace(evaluation=EvaluationConfig(tolerance_ms=0)).validate()


def _relabelled(sorting, ids):
    from esort_jax.recording import Sorting

    return Sorting(sorting.samples, sorting.unit_indices, np.asarray(ids), sorting.sampling_frequency)


@pytest.mark.parametrize("ids", [[100, 101, 102], [-1, -2, -3], ["0", "1", "2"]])
def test_label_ids_that_are_not_truth_units_are_refused_before_training(tmp_path, ids):
    """Ids absent from the truth (100-102; negative; the right numbers as text) could never be
    scored: refused before any training, naming them; nothing is written."""
    recording, truth = tiny_recording(duration_s=1.5, amplitude=10.0)
    labels = _relabelled(truth, ids)
    with pytest.raises(LabelError, match=rf"3 label unit id\(s\) are not units of the ground truth: "
                                          rf"{re.escape(', '.join(map(repr, ids)))}.*truth's 3 units are \[0, 1, 2\]"):
        fit(recording, labels, CONFIG, seed=0, run_dir=tmp_path / "run", truth=truth)
    assert not (tmp_path / "run").exists()


def test_sort_and_evaluate_checks_the_ids_first_and_negative_ids_work_when_they_match():
    recording, truth = tiny_recording(duration_s=1.5, amplitude=10.0)
    negative = _relabelled(truth, [-1, -2, -3])
    fitted = fit(recording, negative, CONFIG, seed=0, truth=_relabelled(truth, [-3, -2, -1]))  # same ids, any order
    with pytest.raises(LabelError, match=r"not units of the ground truth: -1, -2, -3"):
        sort_and_evaluate(fitted, recording, truth, CONFIG)
    outcome = sort_and_evaluate(fitted, recording, negative, CONFIG)
    assert outcome.metrics()["accuracy_pooled"] > 0.8
    with pytest.raises(LabelError, match=r"not units of the ground truth: -1, -2, -3"):  # stage 6 alone
        score(outcome.sort_result, truth, CONFIG)


def test_repeated_or_nan_label_ids_are_refused():
    recording, truth = tiny_recording(duration_s=1.5, amplitude=10.0)
    with pytest.raises(LabelError, match=r"unit ids are not unique: \[0\] name more than one unit"):
        fit(recording, _relabelled(truth, [0, 0, 1]), CONFIG, seed=0)
    with pytest.raises(LabelError, match="unit ids include NaN"):
        fit(recording, _relabelled(truth, [np.nan, 1.0, 2.0]), CONFIG, seed=0)
    # a truth with a repeated id would score one network unit against two truth units
    with pytest.raises(LabelError, match=r"the ground truth's unit ids are not unique: \[1\]"):
        fit(recording, truth.select_units(np.array([0, 1])), CONFIG, seed=0, truth=_relabelled(truth, [0, 1, 1]))


def test_an_experiment_arm_checks_the_ids_before_fine_tuning(tmp_path):
    """experiments._stages.run_arm (every experiment's arm) gives `fit` the truth."""
    import contextlib
    import types

    from experiments._stages import run_arm

    recording, truth = tiny_recording(duration_s=1.5, amplitude=10.0)
    run = types.SimpleNamespace(dir=tmp_path, stage=lambda name: contextlib.nullcontext(),
                                logger=types.SimpleNamespace(log=lambda *a, **k: None))
    with pytest.raises(LabelError, match="not units of the ground truth: 100, 101, 102"):
        run_arm(run, "scratch", recording, truth, CONFIG, seed=0, labels=_relabelled(truth, [100, 101, 102]))
    assert list(tmp_path.iterdir()) == []


def test_training_summary_says_when_the_batch_was_clamped():
    recording, truth = tiny_recording(duration_s=1.5, amplitude=10.0)
    config = CONFIG.replace(train=dataclasses.replace(CONFIG.train, epochs=1, batch_size=100_000))
    summary = fit(recording, truth, config, seed=0).summary()
    m = summary["train_windows"]
    assert summary["batch_size"] == m and summary["final"]["batch_size"] == m
    assert summary["batch_note"].startswith(f"train.batch_size 100000 is larger than the {m} training windows")
    assert "batch_note" not in fit(recording, truth, CONFIG.replace(
        train=dataclasses.replace(CONFIG.train, epochs=1)), seed=0).summary()
