"""esort_jax.online.causal: block-by-block preprocessing equals one pass bit for bit; the settings
travel in the checkpoint and a mismatch is refused; a sorter fed the raw stream equals the
offline sort of the causally preprocessed recording."""

from __future__ import annotations

import json

import numpy as np
import pytest

from esort_jax import ArrayTraces, Recording
from esort_jax.checkpoint import make_metadata, save_checkpoint
from esort_jax.infer import fold_batchnorm
from esort_jax.online import CausalPreprocessConfig, CausalPreprocessor, OnlineConfig, OnlineSorter, SpikeBatch
from esort_jax.online.causal import PreprocessMismatchError, causal_preprocess, checkpoint_extra, resolve_preprocess
from esort_jax.sort import SORTING_DEFAULTS, sort_recording
from esort_jax.train import init_model
from tests._tiny import TINY_MODEL, tiny_recording

SEED = 4242
FS = 32000.0


def _raw(num_samples=8000, num_channels=8):
    """Noise on large per-channel DC offsets and a slow common drift, as an amplifier gives them."""
    rng = np.random.default_rng(SEED)
    t = np.arange(num_samples)[:, None] / FS
    offsets = rng.uniform(-500, 500, num_channels)[None, :]
    return (offsets + 80 * np.sin(2 * np.pi * 3 * t) + 10 * rng.standard_normal((num_samples, num_channels))).astype(
        np.float32)


@pytest.mark.parametrize("config", [
    CausalPreprocessConfig(),
    CausalPreprocessConfig(initial_state="zero", reference_operator="average", order=3),
    CausalPreprocessConfig(bandpass=False),
    CausalPreprocessConfig(common_reference="none"),
])
def test_block_by_block_equals_one_pass(config):
    x = _raw()
    one_pass = CausalPreprocessor(config, FS, 8)(x)
    step = CausalPreprocessor(config, FS, 8)
    cuts = np.unique(np.concatenate([[0], np.cumsum(np.random.default_rng(SEED).integers(1, 300, 200)), [len(x)]]))
    cuts = cuts[cuts <= len(x)]
    blocks = np.concatenate([step(x[a:b]) for a, b in zip(cuts[:-1], cuts[1:])])
    np.testing.assert_array_equal(blocks, one_pass)
    step.reset()
    np.testing.assert_array_equal(step(x[:100]), one_pass[:100])  # reset: a new stream


def test_the_filter_removes_offsets_without_a_start_transient():
    x = _raw()
    steady = CausalPreprocessor(CausalPreprocessConfig(common_reference="none"), FS, 8)(x)
    zero = CausalPreprocessor(CausalPreprocessConfig(common_reference="none", initial_state="zero"), FS, 8)(x)
    assert np.abs(steady[:50]).max() < 60 < np.abs(zero[:50]).max()  # offsets up to 500 µV
    assert np.abs(steady[2000:].mean(axis=0)).max() < 2.0  # DC and the 3 Hz drift are gone


def test_settings_travel_with_the_checkpoint_and_mismatches_are_refused():
    config = CausalPreprocessConfig(freq_min_hz=250.0)
    recorded = checkpoint_extra(causal_preprocess(Recording(ArrayTraces(_raw()), FS, np.zeros((8, 2))), config))
    assert resolve_preprocess(recorded, "checkpoint") == config
    assert resolve_preprocess(recorded, config) == config
    assert resolve_preprocess(recorded, "none") is None
    assert resolve_preprocess({}, "checkpoint") is None  # trained on traces used as given
    with pytest.raises(PreprocessMismatchError, match=r"freq_min_hz.*300.0, 250.0"):
        resolve_preprocess(recorded, CausalPreprocessConfig())
    with pytest.raises(PreprocessMismatchError, match="not trained on causally preprocessed"):
        resolve_preprocess({}, config)
    with pytest.raises(PreprocessMismatchError, match="zero-phase"):
        resolve_preprocess({"preprocess": {"enabled": True, "bandpass": True}}, "checkpoint")


def test_a_raw_stream_sorted_online_equals_the_offline_sort_of_the_causally_preprocessed_recording(tmp_path):
    recording, _ = tiny_recording(duration_s=0.25)
    raw_x = recording.read() + _raw(recording.num_samples)
    raw = Recording(ArrayTraces(raw_x), FS, recording.channel_positions)
    preprocessed = causal_preprocess(raw, CausalPreprocessConfig(), block_samples=1000)
    model = init_model(8, 3, TINY_MODEL, seed=1)
    model.eval()
    meta = make_metadata(model, unit_ids=[7, 8, 9], recording=preprocessed, extra=checkpoint_extra(preprocessed))
    path = save_checkpoint(tmp_path / "ck", model, meta)
    (path / SORTING_DEFAULTS).write_text(json.dumps({"threshold": 4.0}))

    sorter = OnlineSorter.from_checkpoint(path, config=OnlineConfig(max_steps=256))
    assert sorter.preprocess == CausalPreprocessConfig() and sorter.threshold == 4.0
    sorter.warm_up()
    sizes = np.random.default_rng(SEED).integers(1, 700, 100)
    cuts = np.minimum(np.concatenate([[0], np.cumsum(sizes)]), len(raw_x))
    batches = [sorter.push(raw_x[a:b]) for a, b in zip(cuts[:-1], cuts[1:]) if b > a] + [sorter.flush()]
    online = SpikeBatch.concatenate(batches, sorter.unit_ids)
    offline = sort_recording(fold_batchnorm(model), preprocessed, [7, 8, 9], threshold=4.0)
    assert offline.sorting.num_spikes > 0
    np.testing.assert_array_equal(online.samples, offline.sorting.samples)
    np.testing.assert_array_equal(online.unit_indices, offline.sorting.unit_indices)
    np.testing.assert_array_equal(online.scores, offline.scores)
    with pytest.raises(PreprocessMismatchError):
        OnlineSorter.from_checkpoint(path, preprocess=CausalPreprocessConfig(order=4))
