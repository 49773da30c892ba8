import json

import jax
import numpy as np
import pytest
from _tiny import TINY_MODEL, fast_compile, tiny_recording  # noqa: F401 (fixture)
from flax import nnx

import esort_jax.checkpoint as ckpt
from esort_jax.checkpoint import (
    CheckpointError,
    data_fingerprint,
    epoch_checkpoint_path,
    flatten_tree,
    latest_checkpoint,
    load_model,
    make_metadata,
    read_metadata,
    save_checkpoint,
)
from esort_jax.io import read_recording_folder, write_recording_folder
from esort_jax.train import init_model


def _perturbed_model(num_channels=8, num_units=3, seed=0):
    """A model whose every array (including BatchNorm statistics) differs from a fresh init."""
    model = init_model(num_channels, num_units, TINY_MODEL, seed=seed)
    rng = np.random.default_rng(seed + 100)
    noisy = jax.tree.map(  # numpy: eager jax ops would each compile
        lambda a: np.abs(np.asarray(a) + 0.1 * rng.standard_normal(a.shape)).astype(np.float32),  # var > 0
        nnx.to_pure_dict(nnx.state(model)),
    )
    nnx.update(model, noisy)
    return model


def test_round_trip_restores_model_and_metadata(tmp_path):
    recording, _ = tiny_recording()
    model = _perturbed_model()
    meta = make_metadata(model, unit_ids=np.array(["u1", "u2", "u3"]), recording=recording, epoch=3, step=42,
                         train_config={"epochs": 3}, extra={"note": "x"})
    path = save_checkpoint(tmp_path / "ck", model, meta)
    loaded, loaded_meta = load_model(path)
    x = np.random.default_rng(0).standard_normal((5, TINY_MODEL.window, 8)).astype(np.float32)
    model.eval()
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert loaded_meta.unit_ids.tolist() == ["u1", "u2", "u3"]
    assert (loaded_meta.window, loaded_meta.anchor, loaded_meta.num_channels) == (20, 9, 8)
    assert loaded_meta.model_config == TINY_MODEL
    np.testing.assert_array_equal(loaded_meta.channel_positions, recording.channel_positions)
    assert loaded_meta.data_fingerprint == data_fingerprint(recording)
    assert (loaded_meta.epoch, loaded_meta.step, loaded_meta.extra) == (3, 42, {"note": "x"})
    assert loaded_meta.provenance["packages"]["orbax-checkpoint"]
    raw = json.loads((path / "metadata.json").read_text())
    assert raw["format"] == "esort_jax.checkpoint" and raw["window"] == 20 and raw["input_layout"] == "BxWxC:float32:uV"
    with pytest.raises(FileExistsError):
        save_checkpoint(tmp_path / "ck", model, meta)


def test_checkpoint_without_metadata_is_not_valid(tmp_path):
    model = _perturbed_model()
    meta = make_metadata(model, unit_ids=[0, 1, 2])
    for epoch in (1, 2):
        save_checkpoint(epoch_checkpoint_path(tmp_path, epoch), model, meta.replace(epoch=epoch))
    newest = epoch_checkpoint_path(tmp_path, 2)
    (newest / "metadata.json").unlink()
    with pytest.raises(CheckpointError, match="metadata.json is missing"):
        read_metadata(newest)
    with pytest.raises(CheckpointError, match="metadata.json is missing"):
        load_model(newest)
    assert latest_checkpoint(tmp_path) == epoch_checkpoint_path(tmp_path, 1)
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        read_metadata(tmp_path / "nothing")


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    model = _perturbed_model()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "write_json", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ck", model, make_metadata(model, unit_ids=[0, 1, 2]))
    assert list(tmp_path.iterdir()) == []


def test_incompatible_checkpoints_are_refused(tmp_path):
    model = _perturbed_model()
    path = save_checkpoint(tmp_path / "ck", model, make_metadata(model, unit_ids=[0, 1, 2]))
    meta_path = path / "metadata.json"
    data = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**data, "input_layout": "BxCxW:float32:uV"}))
    with pytest.raises(CheckpointError, match=r"input layout 'BxCxW:float32:uV' != .*'BxWxC:float32:uV'"):
        load_model(path)
    meta_path.write_text(json.dumps({**data, "window": 60}))
    with pytest.raises(CheckpointError, match="window 60 disagrees with model_config.window"):
        read_metadata(path)
    meta_path.write_text(json.dumps({**data, "num_channels": 9, "channel_positions": None}))
    with pytest.raises(CheckpointError, match=r"backbone\.spatial\.dense\.kernel has shape \(16, 64\); the model expects \(16, 72\)"):
        load_model(path)
    meta_path.write_text(json.dumps({**data, "format_version": 1}))
    with pytest.raises(CheckpointError, match=r"format_version 1 is older .* stored \[S, F2\*C\].*train the network again"):
        read_metadata(path)


def test_data_fingerprint_ignores_location_but_not_content(tmp_path):
    recording, truth = tiny_recording()
    write_recording_folder(tmp_path / "a", recording, truth)
    write_recording_folder(tmp_path / "b", recording, truth)
    a, _ = read_recording_folder(tmp_path / "a")
    b, _ = read_recording_folder(tmp_path / "b")
    assert data_fingerprint(a) == data_fingerprint(b)
    other, _ = tiny_recording(seed=1)
    assert data_fingerprint(other) != data_fingerprint(recording)


def test_epoch_checkpoints_resume_only_their_own_run(tmp_path):
    """save_epoch_checkpoint + restore_training: the arrays and optimiser state come back, the
    oldest checkpoints are pruned, and another run's signature is refused."""
    import optax

    from esort_jax.windows import WindowConfig, make_windows

    recording, truth = tiny_recording()
    windows = make_windows(recording, truth, WindowConfig(jitter=3), window=20, anchor=9, seed=0)
    model = _perturbed_model()
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    opt_state = jax.tree.map(lambda a: a + 1.0, optax.adam(1e-3).init(params))
    signature = ckpt.resume_signature({"epochs": 3}, model, windows, "none")
    assert ckpt.restore_training(tmp_path, model, opt_state, signature) is None
    for epoch in (1, 2, 3):
        written = ckpt.save_epoch_checkpoint(
            tmp_path, model, opt_state, epoch=epoch, step=10 * epoch, signature=signature, keep=2,
            recording=recording, fingerprint="f", windows=windows, extra={"note": epoch}, train_config={"epochs": 3},
        )
    assert written == epoch_checkpoint_path(tmp_path, 3)
    assert [e for e, _ in ckpt.list_checkpoints(tmp_path)] == [2, 3]
    meta = read_metadata(written)
    assert meta.extra["note"] == 3 and meta.extra["resume_signature"] == signature and meta.step == 30

    fresh = _perturbed_model(seed=1)
    resumed = ckpt.restore_training(tmp_path, fresh, optax.adam(1e-3).init(params), signature)
    assert (resumed.path, resumed.epoch, resumed.step) == (written, 3, 30)
    for want, got in zip(jax.tree.leaves(opt_state), jax.tree.leaves(resumed.opt_state)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    want, got = flatten_tree(nnx.to_pure_dict(nnx.state(model))), flatten_tree(nnx.to_pure_dict(nnx.state(fresh)))
    for name in want:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]), err_msg=name)

    with pytest.raises(CheckpointError, match=r"train\.epochs was 3, now 4"):
        ckpt.restore_training(tmp_path, fresh, opt_state, {**signature, "train_config": {"epochs": 4}})
    with pytest.raises(CheckpointError, match="freeze differs"):
        ckpt.restore_training(tmp_path, fresh, opt_state, {**signature, "freeze": "backbone"})
