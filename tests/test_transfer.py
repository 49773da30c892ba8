import dataclasses
import json
import logging

import jax
import numpy as np
import pytest
from _tiny import TINY_MODEL, fast_compile, tiny_recording  # noqa: F401 (fixture)
from flax import nnx

from esort_jax.checkpoint import CheckpointError, flatten_tree, latest_checkpoint, make_metadata, read_metadata, save_checkpoint
from esort_jax.config import ConfigError, from_dict
from esort_jax.train import TrainConfig, evaluate_windows, init_model, train
from esort_jax.transfer import TransferConfig, finetune_model
from esort_jax.windows import WindowConfig, make_windows

BACKBONE = ("backbone.temporal1.dense", "backbone.temporal1.norm", "backbone.temporal2.dense",
            "backbone.temporal2.norm", "backbone.spatial.dense", "backbone.spatial.norm")


def _arrays(model):
    return {k: np.asarray(v) for k, v in flatten_tree(nnx.to_pure_dict(nnx.state(model))).items()}


def _layer(arrays, layer):
    return {k: v for k, v in arrays.items() if k.startswith(layer + ".")}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A source checkpoint (C=8, N=4) whose arrays all differ from any fresh init."""
    model = init_model(8, 4, TINY_MODEL, seed=3)
    rng = np.random.default_rng(0)
    nnx.update(model, jax.tree.map(
        lambda a: np.abs(np.asarray(a) + rng.standard_normal(a.shape)).astype(np.float32),
        nnx.to_pure_dict(nnx.state(model)),
    ))
    positions = np.stack([np.zeros(8), 20.0 * np.arange(8)], 1)
    path = save_checkpoint(
        tmp_path_factory.mktemp("src") / "ck", model,
        make_metadata(model, unit_ids=[10, 11, 12, 13], channel_positions=positions, epoch=7),
    )
    return path, _arrays(model)


def test_same_channels_restores_backbone_with_fresh_head(source, caplog):
    path, src = source
    with caplog.at_level(logging.INFO, logger="esort_jax.transfer"):
        model, report = finetune_model(8, 3, TINY_MODEL, TransferConfig(checkpoint=str(path)), seed=5)
    scratch, scratch_report = finetune_model(8, 3, TINY_MODEL, TransferConfig(init="scratch"), seed=5)
    got, fresh = _arrays(model), _arrays(scratch)
    for layer in BACKBONE:
        for name, value in _layer(src, layer).items():
            np.testing.assert_array_equal(got[name], value, err_msg=name)
    for name, value in _layer(fresh, "head").items():  # fresh head: the same as scratch (same seed)
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert report.transferred == BACKBONE
    assert report.reinitialised == {"head": "excluded ('head' in transfer.exclude)"}
    assert "transferred backbone.temporal1.dense" in caplog.text and "C=8 -> 8, N=4 -> 3" in caplog.text
    assert scratch_report.transferred == () and "scratch" in scratch_report.message


def test_other_channel_count_transfers_only_shared_temporal_weights(source):
    path, src = source
    model, report = finetune_model(12, 3, TINY_MODEL, TransferConfig(checkpoint=str(path)), seed=5)
    fresh = _arrays(init_model(12, 3, TINY_MODEL, seed=5))
    got = _arrays(model)
    assert report.transferred == ("backbone.temporal1.dense", "backbone.temporal2.dense")
    for layer in report.transferred:
        for name, value in _layer(src, layer).items():
            np.testing.assert_array_equal(got[name], value, err_msg=name)
    for layer in ("backbone.temporal1.norm", "backbone.temporal2.norm", "backbone.spatial.dense",
                  "backbone.spatial.norm", "head"):
        assert layer in report.reinitialised
        for name, value in _layer(fresh, layer).items():
            np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert report.reinitialised["backbone.temporal1.norm"] == "shape (12,) != checkpoint (8,); channel count 8 -> 12"
    assert report.reinitialised["backbone.spatial.norm"] == "follows re-initialised backbone.spatial.dense"
    assert "re-initialised backbone.temporal1.norm (shape (12,)" in report.message


def test_same_channel_count_other_geometry_is_noted(source):
    path, _ = source
    moved = np.stack([np.zeros(8), 10.0 * np.arange(8)], 1)
    _, report = finetune_model(8, 3, TINY_MODEL, TransferConfig(checkpoint=str(path)), seed=5, channel_positions=moved)
    assert "different channel positions" in report.message


def test_mismatched_checkpoints_and_configs_are_refused(source, tmp_path):
    path, _ = source
    longer = dataclasses.replace(TINY_MODEL, window=24)
    with pytest.raises(CheckpointError, match="checkpoint window 20 != model window 24"):
        finetune_model(8, 3, longer, TransferConfig(checkpoint=str(path)), seed=0)
    with pytest.raises(CheckpointError, match=r"checkpoint temporal_features \(4, 8\) != model temporal_features \(4, 6\)"):
        finetune_model(8, 3, dataclasses.replace(TINY_MODEL, temporal_features=(4, 6)), TransferConfig(checkpoint=str(path)), seed=0)
    data = json.loads((path / "metadata.json").read_text())
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(path, bad)
    (bad / "metadata.json").write_text(json.dumps({**data, "input_layout": "BxCxW:float32:uV"}))
    with pytest.raises(CheckpointError, match="checkpoint input layout 'BxCxW:float32:uV' != model input layout"):
        finetune_model(8, 3, TINY_MODEL, TransferConfig(checkpoint=str(bad)), seed=0)
    with pytest.raises(ConfigError, match=r"transfer\.checkpoint: init='transfer' needs"):
        from_dict(TransferConfig, {"init": "transfer"}, "transfer")
    with pytest.raises(ConfigError, match=r"transfer\.freeze"):
        from_dict(TransferConfig, {"init": "scratch", "freeze": "all"}, "transfer")


def test_pretrain_save_finetune_transfer_and_scratch(tmp_path):
    """The workflow end to end: pretrain on a source recording, fine-tune with K spikes per unit."""
    src_rec, src_truth = tiny_recording(num_units=4, seed=10, duration_s=1.0)
    src_windows = make_windows(src_rec, src_truth, WindowConfig(jitter=3), window=20, anchor=9, seed=0)
    pre = train(init_model(8, 4, TINY_MODEL, seed=0), src_rec, src_windows, TrainConfig(epochs=3, batch_size=64, progress=False),
                run_dir=tmp_path / "pretrain")
    source_ckpt = latest_checkpoint(tmp_path / "pretrain")
    assert source_ckpt == pre.checkpoint and read_metadata(source_ckpt).epoch == 3

    rec, truth = tiny_recording(num_units=3, seed=11, unit_ids=["a", "b", "c"])
    windows = make_windows(rec, truth, WindowConfig(jitter=3, spikes_per_unit=5), window=20, anchor=9, seed=0)
    results = {}
    for init in ("transfer", "scratch"):
        config = TransferConfig(init=init, checkpoint=str(source_ckpt), freeze="temporal")
        model, report = finetune_model(8, windows.num_units, TINY_MODEL, config, seed=1)
        out = train(model, rec, windows, TrainConfig(epochs=2, batch_size=64, progress=False), freeze=config.freeze,
                    run_dir=tmp_path / init, transfer=report.to_dict())
        assert read_metadata(out.checkpoint).transfer["init"] == init
        assert read_metadata(out.checkpoint).unit_ids.tolist() == ["a", "b", "c"]
        results[init] = evaluate_windows(out.model, rec, windows.validation, batch_size=64)
    for metrics in results.values():
        assert set(metrics) >= {"precision", "recall", "accuracy", "exact_match"} and metrics["windows"] > 0
