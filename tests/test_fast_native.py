"""The native CPU kernels (esort_jax.fast.native) against the plain products they replace. The
fused inference kernel (temporal_layers) is tested in its context, tests/test_fast_conv.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esort_jax.fast import native

W = 20


def windows_of(traces, starts):
    """[W, B, C] windows gathered the XLA way."""
    return traces[starts[None, :] + jnp.arange(W)[:, None]]


def layer1(kernel_WxF, x_WxBxC):
    """The plain product the kernel computes: h[f, b, c] = Σ_w x[w, b, c] · kernel[w, f]."""
    return jnp.einsum("wf,wbc->fbc", kernel_WxF, x_WxBxC)


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
    want = layer1(kernel, x_WxBxC)
    got = native.window_dense(traces, starts, kernel, W, 1)
    scale = float(jnp.abs(want).max())
    assert got.shape == (features, 45, channels)
    assert float(jnp.abs(got - want).max()) <= 1e-6 * scale
    as_rows = native.window_dense(x_WxBxC.reshape(W * 45, channels), jnp.arange(45, dtype=jnp.int32), kernel, W, 45)
    assert float(jnp.abs(as_rows - want).max()) <= 1e-6 * scale

    cotangent = jnp.asarray(rng.normal(size=want.shape).astype(np.float32))
    want_grad = jax.grad(lambda k: jnp.sum(layer1(k, x_WxBxC) * cotangent))(kernel)
    got_grad = jax.jit(jax.grad(lambda k: jnp.sum(native.window_dense(traces, starts, k, W, 1) * cotangent)))(kernel)
    assert float(jnp.abs(got_grad - want_grad).max()) <= 1e-5 * float(jnp.abs(want_grad).max())


def test_window_outside_the_rows_is_an_error():
    traces = jnp.zeros((100, 16), jnp.float32)
    kernel = jnp.ones((W, 8), jnp.float32)
    with pytest.raises(Exception, match="a window lies outside the rows"):
        native.window_dense(traces, jnp.asarray([81], jnp.int32), kernel, W, 1).block_until_ready()
    with pytest.raises(Exception, match="a window lies outside the rows"):
        native.window_dense(traces, jnp.asarray([-1], jnp.int32), kernel, W, 1).block_until_ready()


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
