"""Sorting = streamed inference into post-processing; fit → sort → evaluate on tiny data."""

import dataclasses

import numpy as np

from esort_jax.evaluate import evaluate
from esort_jax.infer import fold_batchnorm, predict_probabilities
from esort_jax.pipeline import EvaluationConfig, fit, sort_and_evaluate
from esort_jax.postprocess import PostprocessConfig, find_spikes
from esort_jax.sort import select_threshold, sort_recording
from esort_jax.train import TrainConfig, init_model
from esort_jax.transfer import TransferConfig
from esort_jax.windows import WindowConfig
from tests._tiny import TINY_MODEL, fast_compile, tiny_recording  # noqa: F401  (fixture)


def _trained(recording, truth, epochs=6):
    return fit(
        recording, truth, TINY_MODEL, WindowConfig(train_fraction=0.6),
        TrainConfig(epochs=epochs, batch_size=64, progress=False), TransferConfig(init="scratch"), seed=0,
    )


def test_sort_recording_equals_one_pass_and_reports_anchor_samples():
    recording, truth = tiny_recording(duration_s=1.0)
    model = init_model(recording.num_channels, 3, TINY_MODEL, seed=1)
    model.eval()
    params = fold_batchnorm(model)
    small_chunks = dataclasses.replace(PostprocessConfig(), chunk_steps=777)
    from esort_jax.infer import InferenceConfig

    result = sort_recording(
        params, recording, np.array([7, 8, 9]), threshold=4.0, start=1000, stop=20000,
        infer_config=InferenceConfig(chunk_steps=4096, block_steps=512), postprocess_config=small_chunks,
    )
    p_NxT = predict_probabilities(params, recording, start=1000, stop=20000)
    expected = find_spikes(p_NxT, sampling_frequency=recording.sampling_frequency, unit_ids=[7, 8, 9],
                           sample_offset=1000 + TINY_MODEL.anchor, threshold=4.0)
    assert result.sorting.num_spikes == expected.num_spikes > 0
    np.testing.assert_array_equal(result.sorting.samples, expected.samples)
    np.testing.assert_array_equal(result.sorting.unit_ids[result.sorting.unit_indices], expected.unit_ids[expected.unit_indices])
    assert result.sorting.samples.min() >= 1000 + TINY_MODEL.anchor
    assert result.inference_seconds > 0 and result.postprocess_seconds >= 0


def test_fit_sort_evaluate_learns_tiny_units_and_keeps_eval_span_out():
    recording, truth = tiny_recording(duration_s=1.5, amplitude=10.0)
    fitted = _trained(recording, truth)
    e0, e1 = fitted.windows.eval_span
    assert fitted.windows.train.starts.max() + TINY_MODEL.window <= e0  # training never sees it
    outcome = sort_and_evaluate(fitted, recording, truth, EvaluationConfig(window_metrics_max=2048))
    curve_span = outcome.threshold_curve["span"]
    assert curve_span[1] <= e0  # the threshold was chosen before the evaluation span
    assert outcome.threshold in EvaluationConfig().thresholds
    metrics = outcome.metrics()
    assert metrics["accuracy_pooled"] > 0.8, metrics
    assert metrics["window_jaccard"] > 0.5, metrics
    assert outcome.sort_result.span == (e0, e1)
    # The reported metrics are the evaluator's on the sorted span.
    again = evaluate(outcome.sort_result.sorting, truth, tolerance_ms=0.4,
                     span=(e0 + TINY_MODEL.anchor, e1 - TINY_MODEL.window + 1 + TINY_MODEL.anchor))
    assert again.accuracy_pooled == metrics["accuracy_pooled"]


def test_select_threshold_uses_only_its_span():
    recording, truth = tiny_recording(duration_s=1.0, amplitude=10.0)
    fitted = _trained(recording, truth, epochs=3)
    params = fold_batchnorm(fitted.model)
    span = (0, 12000)
    best, curve = select_threshold(params, recording, truth, span, [1.0, 3.0, 5.0])
    corrupted = truth.select_spikes(truth.samples < span[1])  # labels beyond the span removed
    best2, curve2 = select_threshold(params, recording, corrupted, span, [1.0, 3.0, 5.0])
    assert best == best2 and curve["accuracy_pooled"] == curve2["accuracy_pooled"]
