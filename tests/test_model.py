"""The network as the paper defines it (esort_jax.model): shapes and names, shared temporal
filters, and the forward, gradients and BatchNorm statistics against the formulas written out."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _tiny import TINY_MODEL, fast_compile, tiny_recording  # noqa: F401 (fixture)
from flax import nnx

from esort_jax.batches import gather_host
from esort_jax.checkpoint import flatten_tree
from esort_jax.config import ConfigError, from_dict
from esort_jax.model import ESortNet, ModelConfig, window_flops
from esort_jax.windows import WindowConfig, make_windows

TINY = ModelConfig(window=20, anchor=9, temporal_features=(4, 8), spatial_features=16)
W = TINY_MODEL.window


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
    h = model.backbone.temporal1(x)  # [B, F, C]
    h_perm = model.backbone.temporal1(x[:, :, ::-1])
    # BatchNorm in eval mode with fresh statistics is identical for every channel.
    np.testing.assert_allclose(h_perm, h[:, :, ::-1], rtol=1e-6, atol=1e-6)


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


@pytest.fixture(scope="module")
def data():
    recording, truth = tiny_recording(seed=0)
    windows = make_windows(recording, truth, WindowConfig(jitter=3), window=W, anchor=TINY_MODEL.anchor, seed=0)
    return recording, windows


def perturbed_model(num_channels, num_units, seed, perturb):
    """A model whose every array (BatchNorm statistics included) is perturbed by `perturb(a, rng)`."""
    model = ESortNet(num_channels, num_units, TINY_MODEL, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    nnx.update(model, jax.tree.map(lambda a: perturb(np.asarray(a), rng).astype(np.float32),
                                   nnx.to_pure_dict(nnx.state(model))))
    return model


def reference_logits(params, stats, x_BxWxC, train):
    """The E-Sort network written plainly from the paper's description (slow, obvious; jnp so
    that it can be differentiated)."""
    eps = TINY_MODEL.batchnorm_epsilon

    def norm(h, p, s, axis):  # `axis`: the per-feature axis
        axes = tuple(a for a in range(h.ndim) if a != axis)
        shape = [1] * h.ndim
        shape[axis] = -1
        if train:
            mean, var = h.mean(axes, keepdims=True), h.var(axes, keepdims=True)
        else:
            mean, var = s["mean"].reshape(shape), s["var"].reshape(shape)
        return (h - mean) / jnp.sqrt(var + eps) * p["scale"].reshape(shape) + p["bias"].reshape(shape)

    bb, sb = params["backbone"], stats["backbone"]
    t1, t2, sp = bb["temporal1"], bb["temporal2"], bb["spatial"]
    h = jnp.einsum("bwc,wf->bcf", x_BxWxC, t1["dense"]["kernel"]) + t1["dense"]["bias"][None, None]  # shared by channels
    h = jax.nn.relu(norm(h, t1["norm"], sb["temporal1"]["norm"], 1))  # one scale/shift per channel
    h = jnp.einsum("bcf,fg->bcg", h, t2["dense"]["kernel"]) + t2["dense"]["bias"][None, None]
    h = jax.nn.relu(norm(h, t2["norm"], sb["temporal2"]["norm"], 1))
    # flattened feature-major [B, F2·C] against the kernel stored [S, F2·C]
    z = h.transpose(0, 2, 1).reshape(h.shape[0], -1) @ sp["dense"]["kernel"].T + sp["dense"]["bias"][None]
    z = jax.nn.relu(norm(z, sp["norm"], sb["spatial"]["norm"], 1))
    return z @ params["head"]["kernel"] + params["head"]["bias"][None]


def test_network_and_gradients_match_plain_reference(data):
    """The model's forward (train and eval mode) and its gradients are the paper's network."""
    recording, windows = data
    model = perturbed_model(recording.num_channels, windows.num_units, 2,
                            lambda a, rng: np.abs(a + rng.standard_normal(a.shape)))
    params = jax.tree.map(jnp.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    stats = jax.tree.map(jnp.asarray, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
    x = gather_host(recording, windows.train.starts[::8][:32], W)
    y = windows.train.labels[::8][:32].astype(np.float32)
    for train_mode in (False, True):
        model.train() if train_mode else model.eval()
        graphdef = nnx.graphdef(model)

        def loss(p, plain):
            logits = nnx.merge(graphdef, p, stats)(x) if plain else reference_logits(p, stats, x, train_mode)
            return optax.sigmoid_binary_cross_entropy(logits, y).mean(), logits

        (_, model_logits), model_grads = jax.jit(jax.value_and_grad(lambda p: loss(p, True), has_aux=True))(params)
        (_, ref_logits), ref_grads = jax.jit(jax.value_and_grad(lambda p: loss(p, False), has_aux=True))(params)
        np.testing.assert_allclose(model_logits, ref_logits, rtol=1e-4, atol=1e-4)
        model_flat, ref_flat = flatten_tree(model_grads), flatten_tree(ref_grads)
        scale = max(float(np.max(np.abs(g))) for g in ref_flat.values())  # spatial.dense.bias: 0 (noise)
        for name, ref in ref_flat.items():
            np.testing.assert_allclose(model_flat[name], ref, rtol=0, atol=1e-5 * scale, err_msg=f"{name} train={train_mode}")


def reference_batch_stats(params, x_BxWxC):
    """Train-mode batch (mean, biased var) of each BatchNorm, from the plain formulas."""
    eps = TINY_MODEL.batchnorm_epsilon
    bb = params["backbone"]
    out = {}

    def norm(name, h, p, axis):
        axes = tuple(a for a in range(h.ndim) if a != axis)
        mean, var = h.mean(axes), h.var(axes)
        out[name] = (mean, var)
        shape = [1] * h.ndim
        shape[axis] = -1
        return (h - mean.reshape(shape)) / jnp.sqrt(var.reshape(shape) + eps) * p["scale"].reshape(shape) + p["bias"].reshape(shape)

    t1, t2, sp = bb["temporal1"], bb["temporal2"], bb["spatial"]
    h = jnp.einsum("bwc,wf->bcf", x_BxWxC, t1["dense"]["kernel"]) + t1["dense"]["bias"][None, None]
    h = jax.nn.relu(norm("temporal1", h, t1["norm"], 1))
    h = jnp.einsum("bcf,fg->bcg", h, t2["dense"]["kernel"]) + t2["dense"]["bias"][None, None]
    h = jax.nn.relu(norm("temporal2", h, t2["norm"], 1))
    z = h.transpose(0, 2, 1).reshape(h.shape[0], -1) @ sp["dense"]["kernel"].T + sp["dense"]["bias"][None]
    norm("spatial", z, sp["norm"], 1)
    return out


def test_running_statistics_follow_batchnorm(data):
    """Train mode updates every running mean/var as nnx.BatchNorm would: m·old + (1 - m)·batch
    (biased variance), also where the running mean is far from the batch mean (the one-pass
    variance subtracts it first)."""
    recording, windows = data
    model = perturbed_model(recording.num_channels, windows.num_units, 3,
                            lambda a, rng: a + 3.0 * np.abs(rng.standard_normal(a.shape)))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    before = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))["backbone"])  # copies
    x = jnp.asarray(gather_host(recording, windows.train.starts[::4][:64], W))
    reference = reference_batch_stats(params, x)
    model.train()
    model(x)
    after = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))["backbone"]
    m = TINY_MODEL.batchnorm_momentum
    for name, (mean, var) in reference.items():
        np.testing.assert_allclose(after[name]["norm"]["mean"], m * before[name]["norm"]["mean"] + (1 - m) * mean,
                                   rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(after[name]["norm"]["var"], m * before[name]["norm"]["var"] + (1 - m) * var,
                                   rtol=1e-4, atol=1e-5, err_msg=name)
