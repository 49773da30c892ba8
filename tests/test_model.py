import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from esort_jax.config import ConfigError, from_dict
from esort_jax.model import ESortNet, ModelConfig, window_flops

TINY = ModelConfig(window=20, anchor=9, temporal_features=(4, 8), spatial_features=16)


def test_shapes_and_named_layers():
    model = ESortNet(num_channels=6, num_units=3, config=TINY, rngs=nnx.Rngs(0))
    logits = model(jnp.ones((5, 20, 6)))
    assert logits.shape == (5, 3) and logits.dtype == jnp.float32
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert state["backbone"]["temporal1"]["dense"]["kernel"].shape == (20, 4)  # shared over channels
    assert state["backbone"]["temporal1"]["norm"]["scale"].shape == (6,)  # one per channel
    assert state["backbone"]["spatial"]["dense"]["kernel"].shape == (16, 8 * 6)  # [S, F2·C], stored transposed
    assert state["head"]["kernel"].shape == (16, 3)


def test_temporal_filter_is_shared_across_channels():
    """Permuting channels permutes the temporal features (same weights on every channel)."""
    model = ESortNet(num_channels=4, num_units=2, config=TINY, rngs=nnx.Rngs(1))
    model.eval()
    x = jax.random.normal(jax.random.key(0), (3, 20, 4))
    h = model.backbone.temporal1(x)
    h_perm = model.backbone.temporal1(x[:, :, ::-1])
    # BatchNorm in eval mode with fresh statistics is identical for every channel.
    np.testing.assert_allclose(h_perm, h[:, ::-1], rtol=1e-6, atol=1e-6)


def test_rejects_wrong_window_shape():
    model = ESortNet(num_channels=4, num_units=2, config=TINY, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"expects windows \[batch, 20, 4\]"):
        model(jnp.ones((2, 60, 4)))


def test_config_validation_names_key():
    with pytest.raises(ConfigError, match="model.anchor"):
        from_dict(ModelConfig, {"window": 10, "anchor": 10}, "model")


def test_paper_flops_per_window():
    # 384 channels, 100 units: 3.66 MFLOP per window (STACK_NOTES).
    assert window_flops(384, 100, ModelConfig()) == 3_663_872
