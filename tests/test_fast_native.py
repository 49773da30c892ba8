"""The native CPU kernels (esort_jax.fast.native) against the plain products they replace, and
the training step on them under 1, 2 and 4 intra-op threads. The fused inference kernel
(temporal_layers) is tested in its context, tests/test_fast_conv.py.

Without a C++ compiler the kernels cannot be built: their tests skip, saying why (`needs_native`,
also used by the other test modules that run a native kernel)."""

import os
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esort_jax.fast import native

UNAVAILABLE = native.unavailable_reason()  # builds the library on first use
needs_native = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"the native kernels cannot be built on this machine: {UNAVAILABLE}"
)
pytestmark = needs_native

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


STRESS_SCRIPT = textwrap.dedent(
    """
    import hashlib, sys
    import jax
    import numpy as np
    sys.path.insert(0, {tests!r})
    from flax import nnx
    from _tiny import TINY_MODEL, tiny_recording
    from esort_jax.train import TrainConfig, init_model, train
    from esort_jax.windows import WindowConfig, make_windows
    recording, truth = tiny_recording(seed=0, duration_s=1.0)
    windows = make_windows(recording, truth, WindowConfig(jitter=3), window=20, anchor=9, seed=0)
    digest = hashlib.sha256()
    for resident in ("always", "never"):
        model = init_model(recording.num_channels, windows.num_units, TINY_MODEL, seed=0)
        config = TrainConfig(epochs={epochs}, batch_size=32, progress=False, kernel="native", data_on_device=resident)
        result = train(model, recording, windows, config)
        for leaf in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model))):
            digest.update(np.asarray(leaf).tobytes())
        print("STEPS", resident, result.history[-1]["step"])
    print("HASH", digest.hexdigest())
    """
)


def test_native_training_step_under_one_two_and_four_intra_op_threads(tmp_path):
    """The training step (forward window_dense; backward window_dense_grad and contract_long,
    which XLA may run at once) hundreds of times with XLA's intra-op pool at 1, 2 and 4 threads.
    jaxlib sizes that pool from $NPROC (no XLA flag sets it: `intra_op_parallelism_threads` is
    not an XLA_FLAGS flag, `--xla_cpu_multi_thread_eigen` only concerns Eigen's own kernels).
    A kernel whose caller waited for helper tasks queued behind it on that pool deadlocked at 1
    thread; now each run must finish within the time limit (else it is killed and the test
    fails), and the parameters are bit-identical for every thread count (work items and the
    order of their sums do not depend on the threads)."""
    script = STRESS_SCRIPT.format(tests=os.path.dirname(__file__), epochs=8)
    runs = {
        n: subprocess.Popen(
            [sys.executable, "-c", script], env=dict(os.environ, NPROC=str(n), JAX_PLATFORMS="cpu"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for n in (1, 2, 4)
    }
    deadline, outputs = time.monotonic() + 400, {}
    try:
        for n, process in runs.items():
            try:
                out, err = process.communicate(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"native training with {n} intra-op thread(s) did not finish in time (deadlock?)")
            assert process.returncode == 0, f"{n} thread(s): {err[-3000:]}"
            outputs[n] = out
    finally:
        for process in runs.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    hashes = {n: out.split("HASH ")[1].split()[0] for n, out in outputs.items()}
    assert len(set(hashes.values())) == 1, hashes
    steps = [int(line.split()[-1]) for line in outputs[1].splitlines() if line.startswith("STEPS")]
    assert len(steps) == 2 and min(steps) >= 100, steps
