import json
import os
import subprocess
import sys
from pathlib import Path

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
    assert part.resumed_from.name == "epoch_0001" and not part.finished and [h["epoch"] for h in part.history] == [0, 1]
    # ... and resumed to the end: the history holds every epoch, those before each resume too.
    rest = train(fresh(), recording, windows, config, run_dir=tmp_path)
    assert rest.finished and [h["epoch"] for h in rest.history] == [0, 1, 2]
    assert rest.history[:2] == part.history
    expected, got = _arrays(full.model), _arrays(rest.model)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6, err_msg=name)
    for key in ("train_loss", "val_loss", "val_recall", "step"):
        assert [h[key] for h in rest.history] == pytest.approx([h[key] for h in full.history], abs=1e-6), key
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
from esort_jax.batches import gather_host
from esort_jax.train import TrainConfig, create_train_state, init_model, make_mesh, make_train_step, train
from esort_jax.windows import WindowConfig, WindowSet, make_windows

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
    state = create_train_state(model, tx)
    old = flatten_tree(jax.device_get(state.params))
    step = make_train_step(model, tx, mesh, batch_size=64, resident=False)
    P = jax.sharding.PartitionSpec
    state = jax.device_put(state, jax.sharding.NamedSharding(mesh, P()))
    x_dev = jax.device_put(x_wbc, jax.sharding.NamedSharding(mesh, P(None, "data")))
    state, _ = step(state, x_dev, jax.device_put(y, jax.sharding.NamedSharding(mesh, P("data"))))
    new = flatten_tree(jax.device_get(state.params))
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


# ----------------------------------------------------------------------------------------------
# Nothing non-finite trains, nothing absurd is silently run


def _with_value_at(recording, sample, channel, value):
    from esort_jax import ArrayTraces, Recording

    traces = np.array(recording.read(), copy=True)
    traces[sample, channel] = value
    return Recording(ArrayTraces(traces), recording.sampling_frequency, recording.channel_positions)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_traces_in_the_windows_never_train(data, tmp_path, value):
    """One bad sample inside the training (or validation) windows: refused before training,
    naming the sample and channel; nothing is written. A bad sample no window reads is fine."""
    from esort_jax.infer import NonFiniteTracesError

    recording, _, windows = data
    model = init_model(recording.num_channels, windows.num_units, TINY_MODEL, seed=0)
    before = _arrays(model)
    for window_set, name in ((windows.train, "training"), (windows.validation, "validation")):
        sample = int(window_set.starts[len(window_set) // 2]) + 3
        bad = _with_value_at(recording, sample, 5, value)
        with pytest.raises(NonFiniteTracesError, match=rf"the traces the {name} windows read are not finite: first bad "
                                                       rf"value {value} at sample {sample}, channel 5"):
            train(model, bad, windows, TrainConfig(epochs=1, **FAST), run_dir=tmp_path / "run")
        assert not (tmp_path / "run").exists()
    for name, value_ in _arrays(model).items():
        np.testing.assert_array_equal(value_, before[name])
    outside = _with_value_at(recording, windows.eval_span[0] + 10, 5, value)  # the evaluation span
    assert train(model, outside, windows, TrainConfig(epochs=1, **FAST)).finished


@pytest.mark.parametrize("progress", [False, True])
def test_non_finite_loss_stops_training_and_saves_nothing(data, tmp_path, progress):
    """Diverging (learning rate 1e10): stopped at the first non-finite loss that is fetched
    (the epoch's mean, or the progress bar's log step), naming epoch and step; no checkpoint."""
    from esort_jax.train import NonFiniteTrainingError

    recording, _, windows = data
    model = init_model(recording.num_channels, windows.num_units, TINY_MODEL, seed=0)
    config = TrainConfig(epochs=2, batch_size=64, progress=progress, log_every_steps=1, learning_rate=1e10)
    with pytest.raises(NonFiniteTrainingError, match=r"training stopped: the loss is nan at epoch 0, step 2 \(batch 2 "
                                                      r"of the epoch\); nothing from this epoch was saved"):
        train(model, recording, windows, config, run_dir=tmp_path)
    assert list_checkpoints(tmp_path) == []


def test_batch_larger_than_the_training_set_is_clamped_and_said(data, caplog):
    """B > M windows: one batch of the M windows (not each window repeated ~B/M times), in the
    log, the result and every epoch of the history; the same numbers as asking for B = M."""
    recording, _, windows = data
    m = len(windows.train)
    results = {}
    for batch in (8 * m, m):
        model = init_model(recording.num_channels, windows.num_units, TINY_MODEL, seed=0)
        with caplog.at_level("WARNING", logger="esort_jax.train"):
            results[batch] = (train(model, recording, windows, TrainConfig(epochs=2, batch_size=batch, progress=False)),
                              _arrays(model))
    clamped, arrays = results[8 * m]
    note = f"train.batch_size {8 * m} is larger than the {m} training windows: using batch {m}"
    assert clamped.batch_size == m and clamped.batch_note.startswith(note) and note in caplog.text
    assert [h["batch_size"] for h in clamped.history] == [m, m] and [h["step"] for h in clamped.history] == [1, 2]
    exact, exact_arrays = results[m]
    assert exact.batch_note is None and exact.batch_size == m
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], exact_arrays[name], err_msg=name)
