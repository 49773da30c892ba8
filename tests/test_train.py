import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tiny import TINY_MODEL, fast_compile, tiny_recording  # noqa: F401 (fixture)
from flax import nnx

from esort_jax.checkpoint import CheckpointError, flatten_tree, list_checkpoints
from esort_jax.config import ConfigError, from_dict
from esort_jax.train import TrainConfig, evaluate_windows, freeze_labels, init_model, train
from esort_jax.windows import WindowConfig, make_windows

W, A = TINY_MODEL.window, TINY_MODEL.anchor
FAST = dict(batch_size=64, progress=False)


@pytest.fixture(scope="module")
def data():
    recording, truth = tiny_recording(seed=0)
    windows = make_windows(recording, truth, WindowConfig(jitter=3), window=W, anchor=A, seed=0)
    return recording, truth, windows


def _arrays(model):
    return {k: np.asarray(v) for k, v in flatten_tree(nnx.to_pure_dict(nnx.state(model))).items()}


def test_learns_easy_recording(data):
    recording, _, windows = data
    model = init_model(recording.num_channels, windows.num_units, TINY_MODEL, seed=0)
    seen = []
    result = train(model, recording, windows, TrainConfig(epochs=5, **FAST), callback=lambda e, m: seen.append(e))
    first, last = result.history[0], result.history[-1]
    assert seen == [0, 1, 2, 3, 4] and result.finished and result.epochs_completed == 5
    assert last["train_loss"] < 0.5 * first["train_loss"]
    assert last["val_exact_match"] >= 0.95, last
    assert last["val_precision"] >= 0.95 and last["val_recall"] >= 0.95, last
    # The public evaluator agrees with the in-loop validation.
    again = evaluate_windows(model, recording, windows.validation, batch_size=64)
    assert again["exact_match"] == pytest.approx(last["val_exact_match"])


def test_resume_matches_uninterrupted_run(data, tmp_path):
    recording, _, windows = data
    config = TrainConfig(epochs=3, schedule="cosine", warmup_epochs=0.5, **FAST)

    def fresh():
        return init_model(recording.num_channels, windows.num_units, TINY_MODEL, seed=0)

    full = train(fresh(), recording, windows, config)

    # Interrupted by a failing logger after epoch 1 (its checkpoint is already written) ...
    def crash(epoch, metrics):
        if epoch == 0:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        train(fresh(), recording, windows, config, run_dir=tmp_path, callback=crash)
    assert [e for e, _ in list_checkpoints(tmp_path)] == [1]
    # ... stopped on purpose after epoch 2 ...
    part = train(fresh(), recording, windows, TrainConfig(**{**config.__dict__, "stop_after_epochs": 2}), run_dir=tmp_path)
    assert part.resumed_from.name == "epoch_0001" and not part.finished and [h["epoch"] for h in part.history] == [1]
    # ... and resumed to the end.
    rest = train(fresh(), recording, windows, config, run_dir=tmp_path)
    assert rest.finished and [h["epoch"] for h in rest.history] == [2]
    expected, got = _arrays(full.model), _arrays(rest.model)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6, err_msg=name)
    assert rest.history[0]["train_loss"] == pytest.approx(full.history[2]["train_loss"], abs=1e-6)
    assert [e for e, _ in list_checkpoints(tmp_path)] == [2, 3]  # keep_checkpoints=2

    with pytest.raises(CheckpointError, match=r"train\.learning_rate was 0\.005, now 0\.001"):
        train(fresh(), recording, windows, TrainConfig(**{**config.__dict__, "learning_rate": 1e-3}), run_dir=tmp_path)


def test_host_gather_path_matches_device_resident(data):
    recording, _, windows = data
    models = []
    for mode in ("always", "never"):
        model = init_model(recording.num_channels, windows.num_units, TINY_MODEL, seed=1)
        train(model, recording, windows, TrainConfig(epochs=1, data_on_device=mode, **FAST))
        models.append(_arrays(model))
    for name in models[0]:
        np.testing.assert_allclose(models[1][name], models[0][name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_freeze_backbone_only_trains_head(data):
    recording, _, windows = data
    model = init_model(recording.num_channels, windows.num_units, TINY_MODEL, seed=0)
    before = _arrays(model)
    train(model, recording, windows, TrainConfig(epochs=1, **FAST), freeze="backbone")
    after = _arrays(model)
    for name in before:
        changed = not np.array_equal(before[name], after[name])
        if name.startswith("head."):
            assert changed, name
        elif name.rsplit(".", 1)[1] in ("kernel", "bias", "scale"):
            assert not changed, name  # parameters frozen (BatchNorm running stats still update)
    labels = flatten_tree(freeze_labels(nnx.to_pure_dict(nnx.state(model, nnx.Param)), "temporal"))
    assert labels["backbone.temporal1.dense.kernel"] == labels["backbone.temporal2.norm.scale"] == "frozen"
    assert labels["backbone.spatial.dense.kernel"] == labels["head.kernel"] == "trainable"


def _reference_logits(params, stats, x_BxWxC, train):
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
    """The fast feature-major formulation (model.py, custom VJP) computes the paper's network."""
    import optax
    from esort_jax.windows import gather_host

    recording, _, windows = data
    model = init_model(recording.num_channels, windows.num_units, TINY_MODEL, seed=2)
    rng = np.random.default_rng(0)
    nnx.update(model, jax.tree.map(lambda a: np.abs(np.asarray(a) + rng.standard_normal(a.shape)).astype(np.float32),
                                   nnx.to_pure_dict(nnx.state(model))))
    params = jax.tree.map(jnp.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    stats = jax.tree.map(jnp.asarray, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
    x = gather_host(recording, windows.train.starts[::8][:32], W)
    y = windows.train.labels[::8][:32].astype(np.float32)
    for train_mode in (False, True):
        model.train() if train_mode else model.eval()
        graphdef = nnx.graphdef(model)

        def loss(p, fast):
            logits = nnx.merge(graphdef, p, stats)(x) if fast else _reference_logits(p, stats, x, train_mode)
            return optax.sigmoid_binary_cross_entropy(logits, y).mean(), logits

        (_, fast_logits), fast_grads = jax.jit(jax.value_and_grad(lambda p: loss(p, True), has_aux=True))(params)
        (_, ref_logits), ref_grads = jax.jit(jax.value_and_grad(lambda p: loss(p, False), has_aux=True))(params)
        np.testing.assert_allclose(fast_logits, ref_logits, rtol=1e-4, atol=1e-4)
        fast_flat, ref_flat = flatten_tree(fast_grads), flatten_tree(ref_grads)
        scale = max(float(np.max(np.abs(g))) for g in ref_flat.values())  # spatial.dense.bias: 0 (noise)
        for name, ref in ref_flat.items():
            np.testing.assert_allclose(fast_flat[name], ref, rtol=0, atol=1e-5 * scale, err_msg=f"{name} train={train_mode}")


def _reference_batch_stats(params, x_BxWxC):
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
    from esort_jax.windows import gather_host

    recording, _, windows = data
    model = init_model(recording.num_channels, windows.num_units, TINY_MODEL, seed=3)
    rng = np.random.default_rng(1)
    nnx.update(model, jax.tree.map(lambda a: (np.asarray(a) + 3.0 * np.abs(rng.standard_normal(a.shape))).astype(np.float32),
                                   nnx.to_pure_dict(nnx.state(model))))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    before = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))["backbone"])  # copies
    x = jnp.asarray(gather_host(recording, windows.train.starts[::4][:64], W))
    reference = _reference_batch_stats(params, x)
    model.train()
    model(x)
    after = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))["backbone"]
    m = TINY_MODEL.batchnorm_momentum
    for name, (mean, var) in reference.items():
        np.testing.assert_allclose(after[name]["norm"]["mean"], m * before[name]["norm"]["mean"] + (1 - m) * mean,
                                   rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(after[name]["norm"]["var"], m * before[name]["norm"]["var"] + (1 - m) * var,
                                   rtol=1e-4, atol=1e-5, err_msg=name)


def test_config_errors_name_keys(data):
    recording, _, windows = data
    with pytest.raises(ConfigError, match=r"train\.weight_decay: needs optimizer 'adamw'"):
        from_dict(TrainConfig, {"weight_decay": 0.1}, "train")
    with pytest.raises(ConfigError, match=r"train\.warmup_epochs"):
        from_dict(TrainConfig, {"epochs": 2, "warmup_epochs": 3}, "train")
    model = init_model(recording.num_channels, windows.num_units + 1, TINY_MODEL, seed=0)
    with pytest.raises(ValueError, match="model has 4 outputs; the windows label 3 units"):
        train(model, recording, windows, TrainConfig(epochs=1, **FAST))
    with pytest.raises(ConfigError, match="transfer.freeze"):
        freeze_labels({}, "everything")


_MULTI_DEVICE = r"""
import dataclasses, json, sys
import jax
jax.config.update("jax_numpy_rank_promotion", "raise")
sys.path.insert(0, sys.argv[1])
import numpy as np
import optax
from flax import nnx
from _tiny import TINY_MODEL, tiny_recording
from esort_jax.checkpoint import flatten_tree
from esort_jax.config import ConfigError
from esort_jax.train import TrainConfig, init_model, init_train_state, make_mesh, make_train_step, train
from esort_jax.windows import WindowConfig, WindowSet, gather_host, make_windows

assert len(jax.devices()) == 4, jax.devices()
recording, truth = tiny_recording(seed=0)
windows = make_windows(recording, truth, WindowConfig(jitter=3), window=20, anchor=9, seed=0)
x = gather_host(recording, windows.train.starts[:64], 20)
x_wbc = gather_host(recording, windows.train.starts[:64], 20, layout="WBC")
y = windows.train.labels[:64]
report = {"grads": {}, "train": {}}

# 1. One step of the real train step with SGD(lr=1): new = old - grad, so grad = old - new.
for n in (1, 4):
    mesh = make_mesh(jax.devices()[:n])
    model = init_model(8, 3, TINY_MODEL, seed=0)
    tx = optax.sgd(1.0)
    state = init_train_state(model, tx)
    old = flatten_tree(jax.device_get(state["params"]))
    step = make_train_step(model, tx, mesh, batch_size=64, resident=False)
    P = jax.sharding.PartitionSpec
    state = jax.device_put(state, jax.sharding.NamedSharding(mesh, P()))
    x_dev = jax.device_put(x_wbc, jax.sharding.NamedSharding(mesh, P(None, "data")))
    state, _ = step(state, x_dev, jax.device_put(y, jax.sharding.NamedSharding(mesh, P("data"))))
    new = flatten_tree(jax.device_get(state["params"]))
    report["grads"][n] = {k: (old[k] - new[k]).tolist() for k in old}

# 2. A few Adam steps through train(): 3 batches of 64, resident and host-gathered.
few = dataclasses.replace(windows, train=WindowSet(windows.train.starts[::6][:192], windows.train.labels[::6][:192], 20, 9, 3))
out = {}
for n, mode in ((1, "always"), (4, "always"), (4, "never")):
    model = init_model(8, 3, TINY_MODEL, seed=0)
    train(model, recording, few, TrainConfig(epochs=1, batch_size=64, progress=False, data_on_device=mode),
          devices=jax.devices()[:n])
    arrays = {k: np.asarray(v) for k, v in flatten_tree(nnx.to_pure_dict(nnx.state(model))).items()}
    model.train()  # outputs with batch statistics
    out[f"{n}-{mode}"] = (arrays, np.asarray(model(x)))
ref, ref_logits = out["1-always"]
for key, (arrays, logits) in out.items():
    report["train"][key] = {
        "params": {k: float(np.max(np.abs(v - ref[k]))) for k, v in arrays.items()},
        "logits": float(np.max(np.abs(logits - ref_logits))),
    }
try:
    train(init_model(8, 3, TINY_MODEL, seed=0), recording, windows, TrainConfig(epochs=1, batch_size=30, progress=False))
except ConfigError as error:
    report["error"] = str(error)
print("RESULT" + json.dumps(report))
"""

# Gradients must agree to float precision (checked at 1e-6). After Adam steps the parameters agree
# less tightly: Adam divides by sqrt(v), so a parameter with a tiny gradient (temporal1.norm.scale
# starts at ~5e-7 with ~1e-8 rounding noise) moves by lr * (noise / gradient) ~ 1e-4 per step
# differently; the bound 1e-3 is 20% of one step at lr 5e-3. backbone.spatial.dense.bias feeds a
# BatchNorm over the batch axis, so its true gradient is 0 and Adam turns its noise into ±lr steps;
# spatial.norm.mean tracks it. Neither changes the function: the outputs are compared as well.
_ZERO_GRADIENT = ("backbone.spatial.dense.bias", "backbone.spatial.norm.mean")


def test_four_devices_match_one_device():
    """Data parallel over 4 emulated CPU devices = 1 device: BatchNorm uses GLOBAL batch stats."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"  # tiny shapes: compile time dominates
    tests_dir = str(Path(__file__).parent)
    proc = subprocess.run(
        [sys.executable, "-c", _MULTI_DEVICE, tests_dir], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("RESULT", 1)[1])
    one, four = report["grads"]["1"], report["grads"]["4"]
    for name in one:
        np.testing.assert_allclose(four[name], one[name], rtol=0, atol=1e-6, err_msg=name)
    for key in ("4-always", "4-never"):
        for name, diff in report["train"][key]["params"].items():
            if name not in _ZERO_GRADIENT:
                assert diff < 1e-3, (key, name, diff)
        assert report["train"][key]["logits"] < 1e-4, (key, report["train"][key]["logits"])
    assert "train.batch_size: 30 does not divide by the 4 devices" in report["error"]
