"""esort_jax.sort: streamed inference into post-processing equals one pass over P; a split sort
gives the one-pass spikes; spikes are reported at their anchor samples."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from esort_jax.infer import InferenceConfig, fold_batchnorm, predict_probabilities
from esort_jax.postprocess import PostprocessConfig, find_spikes
from esort_jax.sort import sort_recording
from esort_jax.train import init_model
from tests._tiny import TINY_MODEL, fast_compile, tiny_recording  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def params_and_recording():
    recording, _ = tiny_recording(duration_s=1.0)
    model = init_model(recording.num_channels, 3, TINY_MODEL, seed=1)
    model.eval()
    return fold_batchnorm(model), recording


def test_sort_recording_equals_one_pass_and_reports_anchor_samples(params_and_recording):
    params, recording = params_and_recording
    small_chunks = dataclasses.replace(PostprocessConfig(), chunk_steps=777)
    result = sort_recording(
        params, recording, np.array([7, 8, 9]), threshold=4.0, start=1000, stop=20000,
        infer_config=InferenceConfig(chunk_steps=4096, block_steps=512), postprocess_config=small_chunks,
    )
    p_NxT = predict_probabilities(params, recording, start=1000, stop=20000)
    expected = find_spikes(p_NxT, sampling_frequency=recording.sampling_frequency, unit_ids=[7, 8, 9],
                           sample_offset=1000 + TINY_MODEL.anchor, threshold=4.0)
    assert result.sorting.num_spikes == expected.num_spikes > 0
    np.testing.assert_array_equal(result.sorting.samples, expected.samples)
    np.testing.assert_array_equal(result.sorting.unit_ids[result.sorting.unit_indices],
                                  expected.unit_ids[expected.unit_indices])
    assert result.sorting.samples.min() >= 1000 + TINY_MODEL.anchor
    assert result.inference_seconds > 0 and result.postprocess_seconds >= 0 and result.parts == ()


@pytest.mark.parametrize("split", [1000 + TINY_MODEL.window, 9000, 9000 + TINY_MODEL.anchor, 20000 - TINY_MODEL.window])
def test_split_sort_equals_one_pass(params_and_recording, split):
    params, recording = params_and_recording
    common = dict(threshold=3.0, start=1000, stop=20000)
    one = sort_recording(params, recording, None, **common)
    two = sort_recording(params, recording, None, split=split, **common)
    np.testing.assert_array_equal(two.sorting.samples, one.sorting.samples)
    np.testing.assert_array_equal(two.sorting.unit_indices, one.sorting.unit_indices)
    np.testing.assert_array_equal(two.scores, one.scores)
    before, rest = two.parts
    assert before.span[0] == 1000 and rest.span[1] == 20000 and two.span == (1000, 20000)
    assert two.inference_seconds == pytest.approx(before.inference_seconds + rest.inference_seconds)


def test_bad_arguments(params_and_recording):
    params, recording = params_and_recording
    with pytest.raises(ValueError, match="2 unit ids given for a network with 3 units"):
        sort_recording(params, recording, [1, 2], threshold=3.0)
    with pytest.raises(ValueError, match=r"split 15 must leave a window \(20 samples\) on each side"):
        sort_recording(params, recording, None, threshold=3.0, start=10, stop=2000, split=15)
