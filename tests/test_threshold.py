"""esort_jax.threshold: the sweep equals separate runs; the choice sees only its labelled span."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from esort_jax import threshold as threshold_module
from esort_jax.evaluate import EvaluationConfig, evaluate
from esort_jax.infer import fold_batchnorm
from esort_jax.pipeline import PipelineConfig, fit
from esort_jax.postprocess import PostprocessConfig, find_spikes
from esort_jax.recording import Sorting
from esort_jax.threshold import choose_threshold, grid_edge, sweep_thresholds
from esort_jax.train import TrainConfig
from esort_jax.windows import WindowConfig
from tests._tiny import TINY_MODEL, fast_compile, tiny_recording  # noqa: F401  (fixture)

FS = 32000.0
CAPACITY = 128


def _params(recording, truth, epochs=3):
    config = PipelineConfig(model=TINY_MODEL, windows=WindowConfig(train_fraction=0.6),
                            train=TrainConfig(epochs=epochs, batch_size=64, progress=False))
    fitted = fit(recording, truth, config, seed=0)
    fitted.model.eval()
    return fold_batchnorm(fitted.model), fitted.unit_ids


def test_sweep_scores_every_threshold_as_a_separate_run():
    rng = np.random.default_rng(11)
    num_steps, offset = 3000, 5000
    truth_trains = {u: np.sort(rng.choice(np.arange(20, num_steps - 20), 12, replace=False)) for u in range(3)}
    p = (0.2 * rng.random((3, num_steps)) ** 2).astype(np.float32)
    bump = np.exp(-0.5 * (np.arange(-6, 7) / 2.5) ** 2)
    for u, train in truth_trains.items():
        for t in train:
            p[u, t - 6:t + 7] = np.maximum(p[u, t - 6:t + 7], rng.uniform(0.2, 1.0) * bump)
    truth = Sorting.from_unit_dict({u: t + offset for u, t in truth_trains.items()}, FS)
    config = PostprocessConfig(chunk_steps=128, capacity=CAPACITY)
    thresholds = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    best, curve = sweep_thresholds(p, offset, truth, thresholds, tolerance_ms=0.4, config=config)
    for k, value in enumerate(thresholds):
        separate = find_spikes(p, sampling_frequency=FS, unit_ids=truth.unit_ids, sample_offset=offset,
                               config=config, threshold=value)
        assert curve["num_spikes"][k] == separate.num_spikes
        result = evaluate(separate, truth, tolerance_ms=0.4, span=(offset, offset + num_steps))
        assert curve["accuracy_pooled"][k] == pytest.approx(result.accuracy_pooled)
    assert best == thresholds[int(np.argmax(curve["accuracy_pooled"]))]
    assert max(curve["accuracy_pooled"]) > 0.5
    # with a tolerance: the lowest threshold whose agreement is within it of the best
    score = np.asarray(curve["accuracy_pooled"])
    for within in (0.0, 0.02, 0.1, 1.0):
        lenient, _ = sweep_thresholds(p, offset, truth, thresholds, tolerance_ms=0.4, config=config, within=within)
        reach = [t for t, v in zip(thresholds, score) if v >= score.max() - within]
        assert lenient == min(reach) and lenient <= best
    assert sweep_thresholds(p, offset, truth, thresholds, tolerance_ms=0.4, config=config, within=1.0)[0] == 0.5


@pytest.mark.parametrize("tolerance", [-0.01, float("nan"), float("inf")])
def test_a_negative_or_non_finite_threshold_tolerance_is_refused(tolerance):
    from esort_jax.config import ConfigError

    with pytest.raises(ConfigError, match="evaluation.threshold_tolerance: must be a finite number >= 0"):
        EvaluationConfig(threshold_tolerance=tolerance).validate()


def test_choice_uses_only_its_span_and_the_networks_units():
    recording, truth = tiny_recording(duration_s=1.0, amplitude=10.0)
    params, unit_ids = _params(recording, truth)
    span, config = (0, 12000), EvaluationConfig(thresholds=(1.0, 3.0, 5.0))
    best, curve = choose_threshold(params, recording, truth, span, config, unit_ids=unit_ids)
    assert curve["span"] == [0, 12000] and curve["metric"] == "accuracy_pooled" and best in config.thresholds
    # labels beyond the span, and units the network does not have, change nothing
    cut = truth.select_spikes(truth.samples < span[1])
    extra = Sorting(np.concatenate([cut.samples, [100, 5000]]), np.concatenate([cut.unit_indices, [3, 3]]),
                    np.concatenate([cut.unit_ids, [99]]), FS)
    for labels in (cut, extra):
        again, curve2 = choose_threshold(params, recording, labels, span, config, unit_ids=unit_ids)
        assert again == best and curve2["accuracy_pooled"] == curve["accuracy_pooled"]
    # evaluation.threshold_tolerance reaches the sweep and is recorded with it
    assert curve["tolerance"] == 0.0
    lenient, curve3 = choose_threshold(params, recording, truth, span,
                                       EvaluationConfig(thresholds=config.thresholds, threshold_tolerance=1.0),
                                       unit_ids=unit_ids)
    assert lenient == 1.0 and curve3["tolerance"] == 1.0 and curve3["accuracy_pooled"] == curve["accuracy_pooled"]


def test_fixed_threshold_and_errors():
    recording, truth = tiny_recording(duration_s=1.0)
    params, unit_ids = _params(recording, truth, epochs=1)
    assert choose_threshold(params, recording, truth, (0, 100), EvaluationConfig(threshold=2.2),
                            unit_ids=unit_ids) == (2.2, {})
    with pytest.raises(ValueError, match="too short to choose a threshold"):
        choose_threshold(params, recording, truth, (0, 10), EvaluationConfig(), unit_ids=unit_ids)
    with pytest.raises(KeyError, match=r"unit ids \[7\] are not among"):
        choose_threshold(params, recording, truth, (0, 12000), EvaluationConfig(), unit_ids=[0, 1, 7])
    with pytest.raises(ValueError, match="metric must be one of"):
        sweep_thresholds(np.zeros((1, 50), np.float32), 0, Sorting.from_unit_dict({0: [10]}, FS), [1.0],
                         metric="f1")


def test_grid_edge_names_a_choice_at_either_end_of_the_grid():
    assert grid_edge(2.9, [0.5, 1.7, 2.9]) == "highest"
    assert grid_edge(0.5, (2.9, 0.5, 1.7)) == "lowest"
    assert grid_edge(1.7, [0.5, 1.7, 2.9]) is None
    assert grid_edge(1.0, [1.0]) is None  # a one-value grid has no edge to be limited by


@pytest.mark.parametrize("chosen, edge, warned", [(3.0, "highest", True), (1.0, "lowest", False), (2.0, None, False)])
def test_a_choice_at_the_top_of_the_grid_is_recorded_and_warned(monkeypatch, caplog, chosen, edge, warned):
    monkeypatch.setattr(threshold_module, "predict_probabilities", lambda *a, **k: np.zeros((1, 100), np.float32))
    monkeypatch.setattr(threshold_module, "sweep_thresholds", lambda *a, **k: (chosen, {"threshold": [1.0, 2.0, 3.0]}))
    labels = Sorting.from_unit_dict({7: [20, 60]}, FS)
    with caplog.at_level("WARNING", logger="esort_jax.threshold"):
        best, curve = choose_threshold(SimpleNamespace(window=10, anchor=5), None, labels, (0, 100),
                                       EvaluationConfig(thresholds=(1.0, 2.0, 3.0)), unit_ids=[7])
    assert best == chosen and curve["grid_edge"] == edge
    assert ("largest threshold of its grid" in caplog.text) == warned
