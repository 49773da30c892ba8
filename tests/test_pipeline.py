"""esort_jax.pipeline: the stages in order on tiny data — fit learns the units, the threshold
is chosen before the evaluation span on the labels the network was trained from, the sorted
span is the evaluation span and the scores are the evaluator's."""

from __future__ import annotations

import dataclasses

import pytest

from esort_jax.config import ConfigError
from esort_jax.evaluate import EvaluationConfig, evaluate, scored_span
from esort_jax.pipeline import PipelineConfig, fit, sort_and_evaluate
from esort_jax.train import TrainConfig
from esort_jax.transfer import TransferConfig
from esort_jax.windows import WindowConfig
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
