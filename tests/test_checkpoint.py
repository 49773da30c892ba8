import json
import re
import shutil

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


# ----------------------------------------------------------------------------------------------
# Integrity: checksums, missing files, non-finite arrays


def _saved_with_optimiser(path):
    import optax

    model = _perturbed_model()
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    opt_state = jax.tree.map(lambda a: a + 1.0, optax.adam(1e-3).init(params))
    return model, save_checkpoint(path, model, make_metadata(model, unit_ids=[0, 1, 2]), opt_state=opt_state)


def _largest_data_file(path):
    """The biggest file orbax wrote under state/**/d/ (where the array chunks are)."""
    return max((f for f in (path / "state").rglob("*") if f.is_file() and f.parent.name == "d"),
               key=lambda f: f.stat().st_size)


def _flip(file, at, count=64):
    data = bytearray(file.read_bytes())
    data[at : at + count] = bytes(b ^ 0xFF for b in data[at : at + count])
    file.write_bytes(bytes(data))


def _snapshot(folder):
    return {f: f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_checksums_are_recorded_per_array_and_data_file(tmp_path):
    model, path = _saved_with_optimiser(tmp_path / "ck")
    meta = read_metadata(path)
    assert meta.format_version == ckpt.FORMAT_VERSION == 3
    arrays = flatten_tree(ckpt.restore_arrays(path, ("model", "opt_state")))
    assert set(meta.checksums["arrays"]) == set(arrays)
    assert all(meta.checksums["arrays"][k] == ckpt.array_checksum(v) for k, v in arrays.items())
    files = {f.relative_to(path / "state").as_posix(): f.stat().st_size for f in (path / "state").rglob("*") if f.is_file()}
    assert {k: v["bytes"] for k, v in meta.checksums["files"].items()} == files


def test_flipped_bytes_in_array_data_are_detected_everywhere_the_arrays_are_read(tmp_path):
    """64 flipped bytes inside the arrays' data file: load_model, transfer and resume refuse the
    checkpoint naming it and the array; nothing in it is changed by trying."""
    from esort_jax.transfer import TransferConfig, finetune_model

    _, path = _saved_with_optimiser(tmp_path / "ck")
    data_file = _largest_data_file(path)
    _flip(data_file, data_file.stat().st_size // 2)
    before = _snapshot(path)
    corrupt = rf"checkpoint {path} is corrupt: (model|opt_state)\.[\w.]+ checksum mismatch"
    with pytest.raises(CheckpointError, match=corrupt):
        load_model(path)
    with pytest.raises(CheckpointError, match=corrupt):
        finetune_model(8, 3, TINY_MODEL, TransferConfig(init="transfer", checkpoint=str(path)), seed=0)
    # the zstd frame header of the same file: the reader fails; the message names the file
    _flip(data_file, 0)
    with pytest.raises(CheckpointError, match=rf"is corrupt: data file state/\S*{data_file.name} checksum mismatch"):
        load_model(path)
    _flip(data_file, 0)  # undo
    assert _snapshot(path) == before


def test_corrupt_newest_epoch_checkpoint_refuses_resume_and_says_what_to_do(tmp_path):
    import optax

    from esort_jax.windows import WindowConfig, make_windows

    recording, truth = tiny_recording()
    windows = make_windows(recording, truth, WindowConfig(jitter=3), window=20, anchor=9, seed=0)
    model = _perturbed_model()
    opt_state = optax.adam(1e-3).init(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    signature = ckpt.resume_signature({"epochs": 3}, model, windows, "none")
    written = ckpt.save_epoch_checkpoint(
        tmp_path, model, opt_state, epoch=1, step=10, signature=signature, keep=2, recording=recording,
        fingerprint="f", windows=windows, extra={}, train_config={"epochs": 3},
    )
    data_file = _largest_data_file(written)
    _flip(data_file, data_file.stat().st_size // 2)
    with pytest.raises(CheckpointError, match=rf"cannot resume {tmp_path}: checkpoint {written} is corrupt: .* checksum "
                                              rf"mismatch.*Delete {written} to resume from the checkpoint before it"):
        ckpt.restore_training(tmp_path, _perturbed_model(seed=1), opt_state, signature)


def test_missing_or_truncated_data_file_is_named(tmp_path):
    _, path = _saved_with_optimiser(tmp_path / "ck")
    data_file = _largest_data_file(path)
    name = data_file.relative_to(path).as_posix()
    size = data_file.stat().st_size
    data_file.write_bytes(data_file.read_bytes()[: size // 2])
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is corrupt: data file {name} has {size // 2} "
                                              rf"bytes; {size} were saved"):
        load_model(path)
    data_file.unlink()
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is corrupt: missing data file {name}$"):
        ckpt.restore_arrays(path, ("model", "opt_state"))


def test_checkpoint_problem_gives_the_precise_reason(tmp_path):
    _, path = _saved_with_optimiser(tmp_path / "ck")
    assert ckpt.checkpoint_problem(path) is None and ckpt.is_checkpoint(path)
    shutil.rmtree(path / "state")  # metadata.json present, state/ gone
    assert ckpt.checkpoint_problem(path) == f"{path} is not a valid checkpoint: the state/ folder is missing"
    (path / "metadata.json").unlink()
    assert "metadata.json is missing" in ckpt.checkpoint_problem(path)
    assert "does not exist" in ckpt.checkpoint_problem(tmp_path / "nothing")
    assert not ckpt.is_checkpoint(path)


def test_non_finite_arrays_are_never_saved_nor_used(tmp_path, monkeypatch):
    model = _perturbed_model()
    meta = make_metadata(model, unit_ids=[0, 1, 2])
    state = nnx.state(model)
    kernel = np.asarray(state["head"]["kernel"].get_value())
    kernel[1, 2] = np.nan
    nnx.update(model, {"head": {"kernel": kernel}})
    with pytest.raises(CheckpointError, match=rf"refusing to save checkpoint {tmp_path / 'ck'}: model\.head\.kernel "
                                              r"holds 1 non-finite value\(s\) of 48"):
        save_checkpoint(tmp_path / "ck", model, meta)
    assert list(tmp_path.iterdir()) == []
    # A checkpoint with NaN written by other means (consistent checksums): refused when read.
    with monkeypatch.context() as patch:
        patch.setattr(ckpt, "_nonfinite", lambda arrays: None)
        path = save_checkpoint(tmp_path / "ck", model, meta)
    with pytest.raises(CheckpointError, match=rf"checkpoint {path}: model\.head\.kernel holds 1 non-finite "
                                              r"value\(s\) of 48; a network with NaN or inf cannot be used"):
        load_model(path)


def test_format_version_2_without_checksums_is_read_with_a_warning(tmp_path, caplog):
    model, path = _saved_with_optimiser(tmp_path / "ck")
    meta_path = path / "metadata.json"
    data = json.loads(meta_path.read_text())
    del data["checksums"]
    meta_path.write_text(json.dumps({**data, "format_version": 2}))
    with caplog.at_level("WARNING", logger="esort_jax.checkpoint"):
        loaded, meta = load_model(path)
    assert meta.format_version == 2 and meta.checksums == {}
    assert "format version 2, which records no checksums: its arrays cannot be verified" in caplog.text
    np.testing.assert_array_equal(np.asarray(loaded.head.kernel.get_value()), np.asarray(model.head.kernel.get_value()))


@pytest.mark.parametrize("damage", ["flipped", "stateless", "foreign-units"])
def test_sort_entry_point_refuses_a_bad_checkpoint_before_any_work(tmp_path, damage):
    """experiments/sort.py: a corrupt checkpoint and a folder without state/ are refused with
    the precise reason in results.json (status failed) before the recording is made; a network
    whose units are not units of the recording's ground truth before sorting. No sorting is
    written."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    if damage == "foreign-units":  # sound, on the tiny synthetic recording's 16 channels, units 100-102
        model = init_model(16, 3, TINY_MODEL, seed=0)
        checkpoint = save_checkpoint(tmp_path / damage, model, make_metadata(model, unit_ids=[100, 101, 102]))
        message = r"3 label unit id\(s\) are not units of the ground truth: 100, 101, 102"
    else:
        _, checkpoint = _saved_with_optimiser(tmp_path / damage)
    if damage == "flipped":
        _flip(_largest_data_file(checkpoint), _largest_data_file(checkpoint).stat().st_size // 2)
        message = rf"checkpoint {checkpoint} is corrupt: \S+ checksum mismatch"
    elif damage == "stateless":
        shutil.rmtree(checkpoint / "state")
        message = rf"{checkpoint} is not a valid checkpoint: the state/ folder is missing"
    out = tmp_path / "sort"
    run = subprocess.run(
        [sys.executable, str(repo / "experiments" / "sort.py"), f"checkpoint={checkpoint}",
         "data@recording.data=tiny", "logger=disabled", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}"],
        capture_output=True, text=True, cwd=repo, env={**os.environ, "WANDB_MODE": "disabled"}, timeout=300,
    )
    assert run.returncode != 0
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "failed" and re.search(message, results["error"]), results.get("error")
    assert not (out / "sorting").exists()
    assert (tmp_path / "cache").exists() == (damage == "foreign-units")  # the recording was made only then
