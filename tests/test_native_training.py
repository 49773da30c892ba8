"""The native layer-1 kernel of the training step (esort_jax.fast.native.window_dense) against the
XLA path: values, gradients, BatchNorm statistics, the train step's choice and its errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from esort_jax.fast import native
from esort_jax.model import ESortNet, ModelConfig, contract_leading
from esort_jax.train import TrainConfig, make_mesh, resolve_kernel

W = 20


def windows_of(traces, starts):
    """[W, B, C] windows gathered the XLA way."""
    return traces[starts[None, :] + jnp.arange(W)[:, None]]


@pytest.mark.parametrize("channels,features", [(37, 8), (48, 4), (16, 16)])
def test_window_dense_equals_gathered_product(channels, features):
    """Full and partial 16-channel tiles; windows read from traces (stride 1) and from a
    [W, B, C] array viewed as rows (stride B); the kernel gradient."""
    rng = np.random.default_rng(channels)
    traces = jnp.asarray(rng.normal(size=(700, channels)).astype(np.float32))
    starts = jnp.asarray(rng.integers(0, 700 - W + 1, 45).astype(np.int32))
    starts = starts.at[0].set(0).at[1].set(700 - W)  # both ends of the rows
    kernel = jnp.asarray(rng.normal(size=(W, features)).astype(np.float32))
    x_WxBxC = windows_of(traces, starts)
    want = contract_leading(kernel, x_WxBxC)
    got = native.window_dense(traces, starts, kernel, W, 1)
    scale = float(jnp.abs(want).max())
    assert got.shape == (features, 45, channels)
    assert float(jnp.abs(got - want).max()) <= 1e-6 * scale
    as_rows = native.window_dense(x_WxBxC.reshape(W * 45, channels), jnp.arange(45, dtype=jnp.int32), kernel, W, 45)
    assert float(jnp.abs(as_rows - want).max()) <= 1e-6 * scale

    cotangent = jnp.asarray(rng.normal(size=want.shape).astype(np.float32))
    want_grad = jax.grad(lambda k: jnp.sum(contract_leading(k, x_WxBxC) * cotangent))(kernel)
    got_grad = jax.jit(jax.grad(lambda k: jnp.sum(native.window_dense(traces, starts, k, W, 1) * cotangent)))(kernel)
    assert float(jnp.abs(got_grad - want_grad).max()) <= 1e-5 * float(jnp.abs(want_grad).max())


def test_window_outside_the_rows_is_an_error():
    traces = jnp.zeros((100, 16), jnp.float32)
    kernel = jnp.ones((W, 8), jnp.float32)
    with pytest.raises(Exception, match="a window lies outside the rows"):
        native.window_dense(traces, jnp.asarray([81], jnp.int32), kernel, W, 1).block_until_ready()
    with pytest.raises(Exception, match="a window lies outside the rows"):
        native.window_dense(traces, jnp.asarray([-1], jnp.int32), kernel, W, 1).block_until_ready()


MODEL = ModelConfig(window=W, anchor=9, temporal_features=(8, 16), spatial_features=24)


def test_logits_gradients_and_batch_statistics_match_the_xla_forward():
    """model.logits_from_rows (native layer 1) vs model(windows): same loss, gradients and
    BatchNorm running statistics in training mode, same logits in eval mode."""
    rng = np.random.default_rng(3)
    channels, units, batch = 37, 5, 64
    traces = jnp.asarray(rng.normal(0, 10, size=(3000, channels)).astype(np.float32))
    starts = jnp.asarray(rng.integers(0, 3000 - W + 1, batch).astype(np.int32))
    labels = jnp.asarray((rng.random((batch, units)) < 0.2).astype(np.float32))
    model = ESortNet(channels, units, MODEL, rngs=nnx.Rngs(0))
    model.train()
    graphdef = nnx.graphdef(model)  # as the train step holds the model: pure dicts
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    x_BxWxC = jnp.transpose(windows_of(traces, starts), (1, 0, 2))

    def loss(params, stats, forward):
        m = nnx.merge(graphdef, params, stats)
        value = optax.sigmoid_binary_cross_entropy(forward(m), labels).mean()
        return value, nnx.to_pure_dict(nnx.state(m, nnx.BatchStat))

    results = {}
    for name, forward in (("xla", lambda m: m(x_BxWxC)), ("native", lambda m: m.logits_from_rows(traces, starts))):
        step = jax.jit(jax.value_and_grad(lambda p, s, f=forward: loss(p, s, f), has_aux=True))
        (value, new_stats), grads = step(params, stats)
        flat = lambda tree: {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree)}  # noqa: E731
        results[name] = (float(value), flat(new_stats), flat(grads))
    assert results["native"][0] == pytest.approx(results["xla"][0], rel=1e-5)
    for which in (1, 2):
        want, got = dict(results["xla"][which]), dict(results["native"][which])
        assert want.keys() == got.keys()
        for key in want:
            a, b = np.asarray(want[key]), np.asarray(got[key])
            assert np.abs(a - b).max() <= 1e-4 * max(np.abs(a).max(), 1e-3), key

    model.eval()
    want = model(x_BxWxC)
    got = model.logits_from_rows(traces, starts)
    assert float(jnp.abs(want - got).max()) <= 1e-4 * float(jnp.abs(want).max())


def test_kernel_choice_for_training():
    mesh = make_mesh()
    model = ESortNet(16, 3, MODEL, rngs=nnx.Rngs(0))
    assert resolve_kernel("auto", model, mesh) == "native"
    assert resolve_kernel("xla", model, mesh) == "xla"
    bf16 = ESortNet(16, 3, ModelConfig(window=W, anchor=9, compute_dtype="bfloat16"), rngs=nnx.Rngs(0))
    assert resolve_kernel("auto", bf16, mesh) == "xla"
    with pytest.raises(ValueError, match="train.kernel = 'native' cannot be used: model dtype"):
        resolve_kernel("native", bf16, mesh)
    odd = ESortNet(16, 3, ModelConfig(window=W, anchor=9, temporal_features=(6, 8)), rngs=nnx.Rngs(0))
    assert resolve_kernel("auto", odd, mesh) == "xla"
    with pytest.raises(ValueError, match="no native kernel for 6 first-layer features"):
        resolve_kernel("native", odd, mesh)
    with pytest.raises(Exception, match="train.kernel"):
        TrainConfig(kernel="fast").validate()


@pytest.mark.parametrize("f,k,n", [(8, 16, 40_000), (3, 5, 1001), (8, 16, 15)])
def test_long_contraction_equals_float64_product(f, k, n):
    """Register blocks and their remainders (3 x 5), several work items, a scalar tail
    (n not a multiple of 16), n shorter than one vector."""
    rng = np.random.default_rng(n)
    a = rng.normal(size=(f, n)).astype(np.float32)
    b = rng.normal(size=(k, n)).astype(np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64).T
    got = np.asarray(native.contract_long(jnp.asarray(a), jnp.asarray(b)))
    assert got.shape == (f, k)
    scale = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64).T  # Σ_n |a b|: float32 sums err ~1e-7 of it
    assert np.all(np.abs(got - want) <= 1e-6 * scale)
    with pytest.raises(ValueError, match="contract_long"):
        native.contract_long(jnp.asarray(a), jnp.asarray(b[:, :-1]))
