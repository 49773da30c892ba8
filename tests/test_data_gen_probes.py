"""Probe geometries: layouts, depth order, sub-blocks, JSON and explicit positions."""

import numpy as np
import probeinterface
import pytest

from data_gen.config import ProbeConfig
from data_gen.probes import make_probe, make_probe_from_positions, probe_from_config
from esort_jax.config import ConfigError


def _assert_depth_ordered(positions):
    order = np.lexsort((positions[:, 0], positions[:, 1]))
    assert np.array_equal(order, np.arange(len(positions)))


def test_np1_has_384_sites_in_four_staggered_columns():
    probe = make_probe("np1")
    pos = probe.contact_positions
    assert pos.shape == (384, 2)
    _assert_depth_ordered(pos)
    assert np.unique(pos[:, 0]).tolist() == [0.0, 16.0, 32.0, 48.0]
    assert np.allclose(np.unique(pos[:, 1]), np.arange(192) * 20.0)
    # Staggered: even rows use columns 16/48, odd rows 0/32.
    rows = (pos[:, 1] // 20).astype(int)
    assert set(pos[rows % 2 == 0, 0]) == {16.0, 48.0} and set(pos[rows % 2 == 1, 0]) == {0.0, 32.0}
    assert np.array_equal(probe.device_channel_indices, np.arange(384))


def test_np2_has_two_columns_and_dense_is_8_by_48_at_6um():
    np2 = make_probe("np2").contact_positions
    assert np2.shape == (384, 2) and np.unique(np2[:, 0]).tolist() == [0.0, 32.0]
    assert np.allclose(np.unique(np2[:, 1]), np.arange(192) * 15.0)
    dense = make_probe("dense").contact_positions
    _assert_depth_ordered(dense)
    assert dense.shape == (384, 2)
    assert np.allclose(np.unique(dense[:, 0]), np.arange(8) * 6.0)
    assert np.allclose(np.unique(dense[:, 1]), np.arange(48) * 6.0)


def test_sub_block_is_a_contiguous_depth_range():
    full = make_probe("np1").contact_positions
    block = make_probe("np1", n_channels=16, first_channel=100)
    assert np.array_equal(block.contact_positions, full[100:116])
    assert np.array_equal(block.device_channel_indices, np.arange(16))
    with pytest.raises(ConfigError, match="do not fit"):
        make_probe("dense", n_channels=10, first_channel=380)


def test_unknown_name_lists_known_probes():
    with pytest.raises(ConfigError, match="unknown probe 'np9'; known probes: np1, np2, dense"):
        make_probe("np9")


def test_json_round_trip(tmp_path):
    original = make_probe("np2", n_channels=24, first_channel=40)
    path = tmp_path / "probe.json"
    probeinterface.write_probeinterface(path, original)
    loaded = probe_from_config(ProbeConfig(name=str(path)))
    assert np.array_equal(loaded.contact_positions, original.contact_positions)
    sub = probe_from_config(ProbeConfig(name=str(path), n_channels=8, first_channel=4))
    assert np.array_equal(sub.contact_positions, original.contact_positions[4:12])


def test_from_positions_orders_by_depth_then_x():
    positions = np.array([[10.0, 40.0], [0.0, 0.0], [30.0, 0.0], [0.0, 20.0]])
    probe = make_probe_from_positions(positions)
    assert probe.contact_positions.tolist() == [[0.0, 0.0], [30.0, 0.0], [0.0, 20.0], [10.0, 40.0]]
    config_probe = probe_from_config(ProbeConfig(positions_um=tuple(map(tuple, positions))))
    assert np.array_equal(config_probe.contact_positions, probe.contact_positions)
    with pytest.raises(ValueError, match="distinct"):
        make_probe_from_positions([[0.0, 0.0], [0.0, 0.0]])
