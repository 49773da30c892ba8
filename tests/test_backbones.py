"""Pretrained backbones: storage (float16 kernels, checksum verified on load), site matching up to
a translation, the transfer of what matches (spatial weights of the present sites, temporal
layers always), a real (tiny) build, and the command line."""

import json

import numpy as np
import pytest
from flax import nnx

from esort_jax import checkpoint as ckpt
from esort_jax.backbones import (
    BackboneSpec, build_backbone, channel_independent, load_backbone, main, match_sites, pick_backbone, save_backbone,
)
from esort_jax.config import ConfigError, to_dict
from esort_jax.train import init_model
from esort_jax.transfer import TransferConfig, finetune_model
from tests._tiny import TINY_MODEL, fast_compile  # noqa: F401  (fixture)

# an 8-site two-column probe: (0|16 µm, 20 µm pitch)
SITES = np.stack([np.tile([0.0, 16.0], 4), np.repeat(20.0 * np.arange(4), 2)], axis=1)


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("ESORT_BACKBONES_DIR", raising=False)


def _saved_backbone(folder, temporal_only=False):
    model = init_model(len(SITES), 3, TINY_MODEL, seed=5)
    arrays = {k: np.asarray(v) for k, v in ckpt.flatten_tree(nnx.to_pure_dict(nnx.state(model))).items()
              if k.startswith("backbone.")}
    if temporal_only:
        arrays = channel_independent(arrays)
    manifest = {"name": "tiny", "version": "1", "description": "test", "model_config": to_dict(TINY_MODEL),
                "sampling_frequency": 32000.0, "channel_positions": None if temporal_only else SITES.tolist()}
    return save_backbone(arrays, manifest, folder), arrays


def test_storage_is_float16_and_checksummed(tmp_path):
    folder, arrays = _saved_backbone(tmp_path / "b" / "tiny")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["arrays"]["backbone.spatial.dense.kernel"][1] == "float16"
    assert manifest["arrays"]["backbone.temporal1.norm.var"][1] == "float32"
    assert manifest["size_bytes"] == (folder / "backbone.npz").stat().st_size
    loaded = load_backbone(folder)
    np.testing.assert_allclose(loaded.arrays["backbone.spatial.dense.kernel"],
                               arrays["backbone.spatial.dense.kernel"], rtol=1e-3, atol=1e-4)
    blob = bytearray((folder / "backbone.npz").read_bytes())
    blob[-100] ^= 0xFF
    (folder / "backbone.npz").write_bytes(bytes(blob))
    with pytest.raises(ConfigError, match="sha256 .* differs from the manifest's"):
        load_backbone(folder)


def test_sites_match_up_to_a_translation():
    block = SITES[[5, 4, 3, 2]]  # a block of the probe in the probe's coordinates, in another order
    sites, offset, count = match_sites(block, SITES)
    assert sites.tolist() == [5, 4, 3, 2] and offset == (0.0, 0.0) and count == 4
    shifted = block + np.array([100.0, -40.0])  # elsewhere: a block with the same layout
    sites, offset, count = match_sites(shifted, SITES)
    np.testing.assert_allclose(SITES[sites], shifted + np.asarray(offset))
    other = shifted.copy()
    other[0, 0] += 7.0  # one site off the grid
    sites, _, count = match_sites(other, SITES)
    assert sites is None and count == 3


def test_a_probe_block_gets_its_sites_spatial_weights(tmp_path):
    _, arrays = _saved_backbone(tmp_path / "b" / "tiny")
    target = SITES[[2, 3, 4, 5]] + np.array([0.0, 500.0])
    pick = pick_backbone(target, TINY_MODEL, sampling_frequency=30000.0, dirs=[tmp_path / "b"])
    assert pick.spatial and pick.matched_channels == 4 and "spatial weights of the 4 matching sites" in pick.message
    assert "built at 32000 Hz, the recording is at 30000 Hz" in pick.message
    recorded = ckpt.read_metadata(pick.checkpoint).checksums  # verified on load like any checkpoint
    assert recorded["arrays"] and recorded["files"] and ckpt.checkpoint_problem(pick.checkpoint) is None
    model, report = finetune_model(4, 2, TINY_MODEL, TransferConfig(checkpoint=str(pick.checkpoint)), seed=0)
    assert {"backbone.temporal1.dense", "backbone.spatial.dense", "backbone.spatial.norm"} <= set(report.transferred)
    assert "head" in report.reinitialised
    state = ckpt.flatten_tree(nnx.to_pure_dict(nnx.state(model)))
    features = TINY_MODEL.temporal_features[1]
    sites = list(pick.sites)
    np.testing.assert_allclose(SITES[sites], target + np.asarray(pick.offset_um))  # same layout
    expected = arrays["backbone.spatial.dense.kernel"].reshape(-1, features, 8)[:, :, sites].reshape(-1, 4 * features)
    np.testing.assert_allclose(np.asarray(state["backbone.spatial.dense.kernel"]), expected, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.asarray(state["backbone.temporal1.norm.scale"]),
                               arrays["backbone.temporal1.norm.scale"][sites], rtol=1e-6)


def test_an_unknown_layout_gets_the_temporal_layers_only(tmp_path):
    _saved_backbone(tmp_path / "b" / "tiny")
    _saved_backbone(tmp_path / "b" / "temporal", temporal_only=True)
    target = np.stack([np.zeros(5), 33.0 * np.arange(5)], axis=1)  # 33 µm pitch: not on the probe
    pick = pick_backbone(target, TINY_MODEL, dirs=[tmp_path / "b"])
    assert not pick.spatial and "temporal layers only" in pick.message
    model, report = finetune_model(5, 2, TINY_MODEL, TransferConfig(checkpoint=str(pick.checkpoint)), seed=0)
    assert set(report.transferred) >= {"backbone.temporal1.dense", "backbone.temporal2.dense", "backbone.temporal1.norm"}
    assert "not in the checkpoint" in report.reinitialised["backbone.spatial.dense"]
    assert pick_backbone(target, TINY_MODEL.__class__(), dirs=[tmp_path / "b"]) is None  # sizes do not fit


def test_build_and_list(tmp_path, capsys):
    spec = BackboneSpec("mini", "test build", probe="np1", n_channels=8, first_channel=100, duration_s=2.0,
                        sampling_frequency=30000.0, epochs=1)
    folder = build_backbone(spec, tmp_path / "out", cache_dir=tmp_path / "cache", model=TINY_MODEL, progress=False)
    backbone = load_backbone(folder)
    assert backbone.manifest["spec"]["epochs"] == 1 and backbone.manifest["num_channels"] == 8
    assert backbone.manifest["training"]["epochs"] == 1 and backbone.positions.shape == (8, 2)
    main(["list", "--dir", str(tmp_path / "out")])
    assert "mini v1" in capsys.readouterr().out
