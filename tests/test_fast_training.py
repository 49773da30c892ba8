"""The training step's formulation (esort_jax.fast.training) against the reference forward of
esort_jax.model with autodiff: logits, loss, gradients and BatchNorm running statistics, in train
and eval mode, on the XLA path (windows [W, B, C]) and the native one (windows as rows)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from test_fast_native import needs_native

from esort_jax.fast.training import WindowRows, logits
from esort_jax.model import ESortNet, ModelConfig

W = 20
MODEL = ModelConfig(window=W, anchor=9, temporal_features=(8, 16), spatial_features=24)
CHANNELS, UNITS, BATCH = 37, 5, 64  # 37: full and partial 16-channel tiles of the native kernel


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(3)
    traces = jnp.asarray(rng.normal(0, 10, size=(3000, CHANNELS)).astype(np.float32))
    starts = jnp.asarray(rng.integers(0, 3000 - W + 1, BATCH).astype(np.int32))
    labels = jnp.asarray((rng.random((BATCH, UNITS)) < 0.2).astype(np.float32))
    model = ESortNet(CHANNELS, UNITS, MODEL, rngs=nnx.Rngs(0))
    stats = nnx.state(model, nnx.BatchStat)  # running statistics away from the fresh (0, 1)
    nnx.update(model, jax.tree.map(lambda a: jnp.asarray(a + rng.uniform(0.5, 2.0, a.shape), jnp.float32), stats))
    return traces, starts, labels, model


def forwards(traces, starts):
    """name → forward(model): the reference and the fast formulations of the same windows."""
    x_WxBxC = traces[starts[None, :] + jnp.arange(W)[:, None]]
    rows = x_WxBxC.reshape(W * BATCH, CHANNELS)
    return {
        "model": lambda m: m(jnp.transpose(x_WxBxC, (1, 0, 2))),
        "xla": lambda m: logits(m, x_WxBxC),
        "native": lambda m: logits(m, WindowRows(traces, starts, 1)),
        "native-host": lambda m: logits(m, WindowRows(rows, jnp.arange(BATCH, dtype=jnp.int32), BATCH)),
    }


def run(model, forward, labels, train: bool):
    """(loss, logits, new batch statistics, gradients) as the train step computes them."""
    model.train() if train else model.eval()
    graphdef = nnx.graphdef(model)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

    def loss(params):
        m = nnx.merge(graphdef, params, stats)
        out = forward(m)
        value = optax.sigmoid_binary_cross_entropy(out, labels).mean()
        return value, (out, nnx.to_pure_dict(nnx.state(m, nnx.BatchStat)))

    (value, (out, new_stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    flat = lambda tree: {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}  # noqa: E731
    return float(value), np.asarray(out), flat(new_stats), flat(grads)


def assert_close_trees(got: dict, want: dict, what: str):
    assert got.keys() == want.keys()
    for key in want:
        a, b = want[key], got[key]
        assert np.abs(a - b).max() <= 1e-4 * max(np.abs(a).max(), 1e-3), (what, key)


@pytest.fixture(scope="module")
def results(case):
    """results(path, train): `run` of one forward, computed once per module."""
    traces, starts, labels, model = case
    done = {}

    def get(name: str, train: bool):
        if (name, train) not in done:
            done[(name, train)] = run(model, forwards(traces, starts)[name], labels, train)
        return done[(name, train)]

    return get


NATIVE_PATHS = [pytest.param(name, marks=needs_native) for name in ("native", "native-host")]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("path", ["xla", *NATIVE_PATHS])
def test_fast_paths_match_the_model(case, results, path, train):
    """Each fast path gives the model's loss, logits, gradients and running statistics; the
    native paths also match the fast XLA path."""
    _, _, _, model = case
    want_loss, want_logits, want_stats, want_grads = results("model", train)
    assert np.abs(want_logits).max() > 0.1
    loss, out, stats, grads = results(path, train)
    assert loss == pytest.approx(want_loss, rel=1e-5), path
    assert np.abs(out - want_logits).max() <= 1e-4 * np.abs(want_logits).max(), path
    assert_close_trees(stats, want_stats, f"{path} batch statistics")
    assert_close_trees(grads, want_grads, f"{path} gradients")
    if path != "xla":
        xla = results("xla", train)
        assert loss == pytest.approx(xla[0], rel=1e-5)
        assert_close_trees(stats, xla[2], f"{path} vs xla batch statistics")
        assert_close_trees(grads, xla[3], f"{path} vs xla gradients")
    if train:  # the running averages moved
        before = {jax.tree_util.keystr(k): np.asarray(v) for k, v in
                  jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))}
        assert all(np.abs(want_stats[k] - before[k]).max() > 1e-3 for k in before)


def test_rejects_windows_of_another_shape(case):
    traces, starts, _, model = case
    with pytest.raises(ValueError, match=r"expects windows \[20, batch, 37\]"):
        logits(model, jnp.zeros((W, 4, CHANNELS + 1)))
    with pytest.raises(ValueError, match=r"expects rows \[R, 37\]"):
        logits(model, WindowRows(traces[:, :5], starts, 1))
