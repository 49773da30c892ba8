"""esort_jax.online.channel_map: a described stream's columns are matched to the network's
channels by position (or by id when positions are not known on both sides) and anything that is
not the same set of channels is refused, naming the channel."""

from __future__ import annotations

import numpy as np
import pytest

from esort_jax.online.channel_map import ChannelMapError, NothingToCompare, channel_order


def _np1_block(channels=16):
    """Neuropixels 1.0 checkerboard: 2 columns per row, rows 20 µm apart."""
    rows = np.arange(channels) // 2
    x = np.where(rows % 2 == 0, 16.0, 0.0) + 32.0 * (np.arange(channels) % 2)
    return np.stack([x, 20.0 * rows], axis=1)


def test_the_same_order_needs_no_reordering_and_a_permutation_is_undone():
    positions, ids = _np1_block(), np.array([f"AP{i}" for i in range(16)])
    assert channel_order(positions, ids, positions + 0.3, None) is None
    perm = np.random.default_rng(0).permutation(16)
    index = channel_order(positions, ids, positions[perm], ids[perm])
    stream = np.arange(16)[perm]  # the stream's columns carry the network's channels in `perm` order
    np.testing.assert_array_equal(stream[index], np.arange(16))
    # ids alone decide when the checkpoint has no positions (or they are unknown: NaN)
    np.testing.assert_array_equal(channel_order(None, ids, None, ids[perm]), index)
    np.testing.assert_array_equal(channel_order(np.full((16, 2), np.nan), ids, positions[perm], ids[perm]), index)
    # positions decide over ids when both sides have them (ids are often renumbered between tools)
    np.testing.assert_array_equal(channel_order(positions, ids, positions[perm], ids), index)


@pytest.mark.parametrize("change, message", [
    (lambda p, i: (p[:15], i), "describes 15 channels; the network takes 16"),
    (lambda p, i: (p + [0.0, 40.0], i), r"channel 0 at \(16, 0\) µm has no stream channel within 1 µm"),
    (lambda p, i: (np.concatenate([p[:15], p[14:15] + 0.2]), i), r"no stream channel|nearest position of 2"),
    (lambda p, i: (None, i[:15]), "15 channel ids; the network takes 16"),
    (lambda p, i: (None, np.concatenate([i[:15], i[:1]])), "ids repeat"),
    (lambda p, i: (None, np.concatenate([i[:15], ["LF0"]])), "1 of the network's channel ids are not in the stream"),
])
def test_streams_that_do_not_carry_the_networks_channels_are_refused(change, message):
    positions, ids = _np1_block(), np.array([f"AP{i}" for i in range(16)])
    stream_positions, stream_ids = change(positions, ids)
    with pytest.raises(ChannelMapError, match=message):
        channel_order(positions if stream_positions is not None else None, ids, stream_positions, stream_ids)


def test_two_network_channels_cannot_share_one_stream_column():
    positions = _np1_block(4)
    squeezed = positions.copy()
    squeezed[1] = positions[0] + 0.5  # column 1 lies next to channel 0; nothing is near channel 1
    with pytest.raises(ChannelMapError):
        channel_order(positions, None, squeezed, None, tolerance_um=40.0)


def test_nothing_to_compare_is_its_own_error():
    with pytest.raises(NothingToCompare, match="describes its channel positions.*records ids"):
        channel_order(None, np.arange(4), _np1_block(4), None)
    with pytest.raises(NothingToCompare, match="neither positions nor ids"):
        channel_order(None, None, _np1_block(4), np.arange(4))
