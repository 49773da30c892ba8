"""Inference over a recording (esort_jax.infer): folding, streaming in chunks over devices, reading
ahead, errors; the probabilities against window-by-window evaluation of the Flax model."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_fast_native import needs_native

from esort_jax import infer
from esort_jax.model import ESortNet, ModelConfig
from esort_jax.recording import ArrayTraces, Recording

TINY = ModelConfig(window=20, anchor=9, temporal_features=(4, 8), spatial_features=16)
C, N = 8, 3
# One kernel layout for most tests (compiles are the cost here).
FAST = dict(block_steps=64, segment=16)
CFG = infer.InferenceConfig(chunk_steps=256, **FAST)


def randomise_batchnorm(model: ESortNet, seed: int) -> None:
    """Non-trivial running statistics, scales of both signs, biases."""
    rng = np.random.default_rng(seed)
    bb = model.backbone
    for norm in (bb.temporal1.norm, bb.temporal2.norm, bb.spatial.norm):
        n = norm.mean[...].shape
        norm.mean[...] = jnp.asarray(rng.normal(0.0, 0.5, n), jnp.float32)
        norm.var[...] = jnp.asarray(rng.uniform(0.3, 3.0, n), jnp.float32)
        norm.scale[...] = jnp.asarray(rng.normal(0.0, 1.0, n), jnp.float32)
        norm.bias[...] = jnp.asarray(rng.normal(0.0, 0.5, n), jnp.float32)


def make_model(seed: int = 0, num_channels: int = C, num_units: int = N) -> ESortNet:
    model = ESortNet(num_channels, num_units, TINY, rngs=nnx.Rngs(seed))
    randomise_batchnorm(model, seed + 100)
    model.eval()
    return model


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def synthetic_traces(num_samples: int, num_channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian noise (10 µV) plus spikes of three units with spatially decaying waveforms.

    Returns traces [T, C] float32 µV and the spike troughs [S, 2] (sample, unit)."""
    rng = np.random.default_rng(seed)
    traces = rng.normal(0.0, 10.0, (num_samples, num_channels)).astype(np.float32)
    t = np.arange(40) - 12.0
    shape = -np.exp(-0.5 * (t / 3.0) ** 2) + 0.35 * np.exp(-0.5 * ((t - 9.0) / 5.0) ** 2)
    spikes = []
    for unit, (peak_channel, amplitude) in enumerate([(1, 120.0), (4, 80.0), (6, 150.0)]):
        decay = np.exp(-np.abs(np.arange(num_channels) - peak_channel) / 1.5)
        template = amplitude * shape[:, None] * decay[None, :]
        times = np.sort(rng.choice(np.arange(20, num_samples - 40), size=num_samples // 400, replace=False))
        for s in times:
            traces[s - 12:s + 28] += template.astype(np.float32)
            spikes.append((s, unit))
    return traces, np.asarray(spikes)


def fit_batchnorm_statistics(model: ESortNet, traces: np.ndarray) -> None:
    """Realistic running statistics: train-mode passes over windows of the recording."""
    rng = np.random.default_rng(0)
    starts = rng.integers(0, traces.shape[0] - TINY.window, 256)
    windows = jnp.asarray(traces[starts[:, None] + np.arange(TINY.window)[None, :]])
    model.train()
    for _ in range(30):
        model(windows)
    model.eval()


@pytest.fixture(scope="module")
def model():
    return make_model(0)


@pytest.fixture(scope="module")
def params(model):
    return infer.fold_batchnorm(model)


def test_folded_dense_equals_flax_model(model, params):
    x = jax.random.normal(jax.random.key(1), (64, TINY.window, C)) * 3.0
    want = sigmoid(model(x))
    got = sigmoid(infer.forward_windows(params, x))
    assert np.abs(got - want).max() <= 1e-5
    # temporal weights stay shared; the BatchNorm scale is per channel
    assert params.k1_WxF1.shape == (TINY.window, 4) and params.scale1_C.shape == (C,)
    assert params.k3_CxF2xS.shape == (C, 8, 16) and params.anchor == TINY.anchor
    assert params.flops_per_step() == 2 * (C * 20 * 4 + C * 4 * 8 + C * 8 * 16 + 16 * N)


def test_a_network_that_is_not_finite_is_refused_when_folded():
    """A NaN parameter, or statistics that overflow float32 once folded (1e38 / sqrt(1e-30)),
    would give NaN probabilities and a sort with no spikes: refused, naming the array."""
    model = make_model(0)
    model.head.kernel[...] = model.head.kernel[...].at[0, 1].set(jnp.nan)
    with pytest.raises(ValueError, match=r"not finite: InferenceParams\.k4_SxN holds 1 NaN/inf value\(s\) of 48"):
        infer.fold_batchnorm(model)
    model = make_model(0)
    model.backbone.spatial.norm.scale[...] = jnp.full_like(model.backbone.spatial.norm.scale[...], 1e38)
    model.backbone.spatial.norm.var[...] = jnp.full_like(model.backbone.spatial.norm.var[...], 1e-30)
    with pytest.raises(ValueError, match=r"not finite: InferenceParams\.k3_CxF2xS"):
        infer.fold_batchnorm(model)


def test_params_are_a_pytree(params):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    assert len(leaves) == 10
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert back.anchor == params.anchor and back.window == params.window


@needs_native
def test_auto_takes_the_native_kernel(params):
    assert infer.InferenceConfig().resolve_kernel(params).kernel == "native"


def test_kernel_choice(params):
    """'auto' takes XLA where the native kernel does not apply; asking for 'native' where it
    cannot run is an error that says why."""
    assert infer.InferenceConfig(kernel="xla").resolve_kernel(params).kernel == "xla"
    bf16 = infer.InferenceConfig(compute_dtype="bfloat16")
    assert bf16.resolve_kernel(params).kernel == "xla"
    with pytest.raises(ValueError, match="infer.kernel = 'native' cannot be used: compute_dtype"):
        infer.InferenceConfig(kernel="native", compute_dtype="bfloat16").resolve_kernel(params)
    odd = ModelConfig(window=20, anchor=9, temporal_features=(3, 5), spatial_features=16)
    odd_params = infer.fold_batchnorm(ESortNet(C, N, odd, rngs=nnx.Rngs(0)))
    assert infer.InferenceConfig().resolve_kernel(odd_params).kernel == "xla"
    with pytest.raises(ValueError, match=r"no native kernel for temporal features \(3, 5\)"):
        infer.InferenceConfig(kernel="native").resolve_kernel(odd_params)
    with pytest.raises(ValueError, match="infer.kernel"):
        infer.InferenceConfig(kernel="fast").validate()


def test_realistic_recording_memmapped(tmp_path):
    """Noise + spike waveforms, BatchNorm statistics fitted on the data, memory-mapped .npy."""
    traces, _ = synthetic_traces(6000, C, seed=3)
    model = ESortNet(C, N, TINY, rngs=nnx.Rngs(5))
    fit_batchnorm_statistics(model, traces)
    params = infer.fold_batchnorm(model)
    np.save(tmp_path / "traces.npy", traces)
    rec = Recording(
        traces=ArrayTraces(np.load(tmp_path / "traces.npy", mmap_mode="r")),
        sampling_frequency=32000.0,
        channel_positions=np.stack([np.zeros(C), 20.0 * np.arange(C)], axis=1),
    )
    want = sigmoid(infer.naive_logits(model, traces, block_steps=512)).T
    got = infer.predict_probabilities(params, rec, CFG)
    assert got.shape == (N, 6000 - TINY.window + 1) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-5
    assert want.std() > 0.01  # the probabilities actually vary on this data


@pytest.mark.parametrize("kernel", ["xla", pytest.param("native", marks=needs_native)])
def test_chunking_does_not_change_results(model, params, kernel):
    x = np.random.default_rng(4).normal(0.0, 10.0, (1500, C)).astype(np.float32)
    want = sigmoid(infer.naive_logits(model, x, block_steps=256)).T
    start, stop = 37, 1411  # windows inside [start, stop), not aligned to segments or blocks
    results = []
    for chunk_steps in (64, 256, 2048):
        cfg = infer.InferenceConfig(chunk_steps=chunk_steps, kernel=kernel, **FAST)
        got = infer.predict_probabilities(params, x, cfg, start=start, stop=stop)
        assert got.shape == (N, stop - start - TINY.window + 1)
        assert np.abs(got - want[:, start:stop - TINY.window + 1]).max() <= 1e-5
        results.append(got)
    assert np.abs(results[0] - results[1]).max() <= 1e-6
    assert np.abs(results[0] - results[2]).max() <= 1e-6


def test_streaming_chunks_tile_the_trace(params):
    x = np.random.default_rng(5).normal(0.0, 10.0, (900, C)).astype(np.float32)
    full = infer.predict_probabilities(params, x, CFG)
    starts, pieces = zip(*infer.iter_probabilities(params, x, CFG))
    assert list(starts) == [0, 256, 512, 768]
    assert [p.shape for p in pieces] == [(N, 256)] * 3 + [(N, 900 - 19 - 768)]
    np.testing.assert_array_equal(np.concatenate(pieces, axis=1), full)
    # inline reading gives the same numbers; float16 output is the float32 output rounded
    inline = infer.predict_probabilities(params, x, infer.InferenceConfig(chunk_steps=256, prefetch=0, **FAST))
    np.testing.assert_array_equal(inline, full)
    half = infer.predict_probabilities(params, x, infer.InferenceConfig(chunk_steps=256, output_dtype="float16", **FAST))
    assert half.dtype == np.float16 and np.abs(half.astype(np.float32) - full).max() <= 1e-3
    # a consumer may stop early: the read-ahead thread ends with the generator
    stream = infer.iter_probabilities(params, x, CFG)
    assert next(stream)[0] == 0
    stream.close()


def test_read_errors_reach_the_consumer(params):
    class Failing:
        shape = (900, C)

        def read(self, start, stop):
            if start > 0:
                raise OSError("disk gone")
            return np.zeros((stop - start, C), np.float32)

    with pytest.raises(OSError, match="disk gone"):
        list(infer.iter_probabilities(params, Failing(), CFG))


def test_bfloat16_compute_is_close(params):
    x = np.random.default_rng(6).normal(0.0, 10.0, (700, C)).astype(np.float32)
    full = infer.predict_probabilities(params, x, CFG)
    bf16 = infer.predict_probabilities(
        params, x, infer.InferenceConfig(chunk_steps=256, compute_dtype="bfloat16", **FAST)
    )
    diff = np.abs(bf16 - full)
    assert 0 < diff.max() < 0.05 and diff.mean() < 5e-3


def test_input_errors(model, params):
    x = np.zeros((500, C), np.float32)
    with pytest.raises(ValueError, match="expects 8 channels"):
        infer.predict_probabilities(params, np.zeros((500, C + 1), np.float32), CFG)
    with pytest.raises(ValueError, match="fewer than one window of 20"):
        infer.predict_probabilities(params, x[:19], CFG)
    with pytest.raises(ValueError, match=r"expected windows \[batch, 20, 8\]"):
        infer.forward_windows(params, jnp.zeros((2, 60, C)))
    bad = x.copy()
    bad[300, 5] = np.nan  # in the second chunk (and in the overlap of the first)
    bad[400, 2] = np.inf
    with pytest.raises(infer.NonFiniteTracesError, match="at sample 300, channel 5"):
        infer.predict_probabilities(params, bad, CFG)
    bad[300, 5] = 0.0
    with pytest.raises(infer.NonFiniteTracesError, match="inf at sample 400, channel 2"):
        for _ in infer.iter_probabilities(params, bad, CFG):
            pass
    with pytest.raises(Exception, match="infer.block_steps"):
        infer.InferenceConfig(block_steps=30, segment=16).validate()


def test_fold_checks_window(model):
    bad = ESortNet(C, N, ModelConfig(window=24, anchor=9, temporal_features=(4, 8), spatial_features=16),
                   rngs=nnx.Rngs(0))
    bad.config = TINY  # a config that disagrees with the weights
    with pytest.raises(ValueError, match="window = 20 but temporal1 has a kernel for 24"):
        infer.fold_batchnorm(bad)


MULTI_DEVICE_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np, jax
    sys.path.insert(0, {tests!r})
    from test_infer import make_model, sigmoid
    from esort_jax import infer
    assert jax.local_device_count() == 4, jax.devices()
    model = make_model(7)
    params = infer.fold_batchnorm(model)
    x = np.random.default_rng(8).normal(0.0, 10.0, (1700, 8)).astype(np.float32)
    cfg = infer.InferenceConfig(chunk_steps=256, block_steps=64, segment=16, kernel={kernel!r})
    many = infer.predict_probabilities(params, x, cfg)             # 7 chunks over 4 devices
    one = infer.predict_probabilities(params, x, infer.InferenceConfig(
        chunk_steps=256, block_steps=64, segment=16, num_devices=1, kernel={kernel!r}))
    want = sigmoid(infer.naive_logits(model, x, block_steps=512)).T
    bad = x.copy(); bad[1234, 3] = np.nan
    try:
        infer.predict_probabilities(params, bad, cfg)
        located = "no error"
    except infer.NonFiniteTracesError as error:
        located = str(error)
    print("RESULT", np.abs(many - one).max(), np.abs(many - want).max(), many.shape, "|", located)
    """
)


@pytest.mark.parametrize("kernel", ["xla", pytest.param("native", marks=needs_native)])
def test_sharded_over_four_devices_equals_one(kernel):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    script = MULTI_DEVICE_SCRIPT.format(tests=os.path.dirname(__file__), kernel=kernel)
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    line = [l for l in run.stdout.splitlines() if l.startswith("RESULT")][-1]
    numbers, located = line.split("|")
    _, d_one, d_naive, *_ = numbers.split()
    assert float(d_one) <= 1e-6 and float(d_naive) <= 1e-5
    assert "(3, 1681)" in numbers
    assert "sample 1234, channel 3" in located
