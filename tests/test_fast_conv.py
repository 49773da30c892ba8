"""Inference in convolution form (esort_jax.fast.conv) against the Flax model (esort_jax.model)
evaluated window by window, with the XLA (banded-Toeplitz) and the native kernel."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_fast_native import needs_native
from test_infer import C, N, TINY, make_model, randomise_batchnorm, sigmoid

from esort_jax import infer
from esort_jax.fast.conv import conv_logits
from esort_jax.model import ESortNet, ModelConfig


@pytest.fixture(scope="module")
def model():
    return make_model(0)


@pytest.fixture(scope="module")
def params(model):
    return infer.fold_batchnorm(model)


@pytest.mark.parametrize("segment,block", [(16, 64), (4, 32), (7, 21)])
def test_conv_form_equals_flax_window_by_window(model, params, segment, block):
    x = np.random.default_rng(2).normal(0.0, 10.0, (331, C)).astype(np.float32)
    want = sigmoid(infer.naive_logits(model, x, block_steps=128))
    got = sigmoid(conv_logits(params, jnp.asarray(x), block_steps=block, segment=segment))
    assert got.shape == (331 - TINY.window + 1, N)
    assert np.abs(got - want).max() <= 1e-5


WIDE = ModelConfig(window=20, anchor=9, temporal_features=(8, 16), spatial_features=16)


@needs_native
@pytest.mark.parametrize("config,num_channels,block", [(TINY, 8, 64), (TINY, 37, 400), (WIDE, 37, 130)])
def test_native_kernel_equals_flax_window_by_window(config, num_channels, block):
    """The fused C++ temporal layers: full and partial 16-channel tiles, step counts that are
    not multiples of the 3-step tile, several work items per block (block 400)."""
    model = ESortNet(num_channels, N, config, rngs=nnx.Rngs(11))
    randomise_batchnorm(model, 12)
    model.eval()
    params = infer.fold_batchnorm(model)
    x = np.random.default_rng(13).normal(0.0, 10.0, (1000, num_channels)).astype(np.float32)
    want = sigmoid(infer.naive_logits(model, x, block_steps=256))
    got = sigmoid(conv_logits(params, jnp.asarray(x), block_steps=block, kernel="native"))
    assert got.shape == want.shape == (1000 - config.window + 1, N)
    assert np.abs(got - want).max() <= 1e-5
    assert want.std() > 0.01


def test_input_errors(params):
    with pytest.raises(ValueError, match="expected traces"):
        conv_logits(params, jnp.zeros((100, C + 2)))
    with pytest.raises(ValueError, match="fewer than one window"):
        conv_logits(params, jnp.zeros((TINY.window - 1, C)))
    with pytest.raises(ValueError, match="must be a multiple of segment"):
        conv_logits(params, jnp.zeros((100, C)), block_steps=30, segment=16)
    with pytest.raises(ValueError, match="native kernel computes in float32"):
        conv_logits(params, jnp.zeros((100, C)), kernel="native", compute_dtype="bfloat16")
