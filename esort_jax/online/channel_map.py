"""Which incoming column is which of the network's channels.

A block carries only its channel count, so a publisher whose channels come in another order
(SpikeGLX's saved order against a probe map, a bridge that sorts by depth, a crossed cable) would
be sorted wrongly and silently. A publisher that describes its stream (protocol.pack_stream:
channel positions and/or ids in its column order) lets the service check it against the
checkpoint's and reorder the columns:

    index = channel_order(expected_positions, expected_ids, described_positions, described_ids)
    samples[:, index]   # the network's order; index is None when the orders already agree

Positions are matched within `tolerance_um` (one-to-one, every channel); ids are matched
exactly. When both sides record positions those decide (ids are often renumbered between tools);
otherwise ids; a stream that matches neither way is refused (ChannelMapError says which channel).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ChannelMapError", "NothingToCompare", "channel_order"]


class ChannelMapError(ValueError):
    """A described stream does not carry the network's channels."""


class NothingToCompare(ChannelMapError):
    """Neither positions nor ids are known on both sides (e.g. a network saved without them)."""


def channel_order(expected_positions, expected_ids, positions=None, ids=None, *,
                  tolerance_um: float = 1.0) -> np.ndarray | None:
    """The column index putting a described stream into the network's channel order.

    Args:
      expected_positions: [C, 2] µm the network was trained on (None if the checkpoint has none).
      expected_ids: [C] channel ids it was trained on (None if unknown).
      positions, ids: the stream's, in its column order (either may be None).
    Returns:
      None when the columns are already in the network's order, else [C] int index with
      stream[:, index] in the network's order.
    Raises:
      ChannelMapError when the stream's channels are not the network's; NothingToCompare (a
      ChannelMapError) when no kind of description is known on both sides (non-finite
      positions count as unknown): the caller decides whether an unchecked stream is acceptable.
    """
    expected_positions, positions = _known(expected_positions), _known(positions)
    if positions is not None and expected_positions is not None:
        index = _match_positions(expected_positions, positions, tolerance_um)
    elif ids is not None and expected_ids is not None:
        index = _match_ids(np.asarray(expected_ids), np.asarray(ids))
    else:
        have = [name for name, value in (("positions", positions), ("ids", ids)) if value is not None]
        known = [name for name, value in (("positions", expected_positions), ("ids", expected_ids))
                 if value is not None]
        raise NothingToCompare(f"nothing to compare: the stream describes its channel {' and '.join(have) or 'nothing'}, "
                              f"the checkpoint records {' and '.join(known) or 'neither positions nor ids'}")
    return None if np.array_equal(index, np.arange(index.size)) else index


def _known(positions):
    """Positions as a float array, or None when absent or not all finite (unknown geometry)."""
    if positions is None:
        return None
    positions = np.asarray(positions, float)
    return positions if positions.size and np.isfinite(positions).all() else None


def _match_positions(expected: np.ndarray, got: np.ndarray, tolerance_um: float) -> np.ndarray:
    if got.ndim != 2 or got.shape[1] < 2:  # finite already (_known)
        raise ChannelMapError(f"channel positions must be [C, 2] µm; got shape {got.shape}")
    got = got[:, :2]
    if got.shape[0] != expected.shape[0]:
        raise ChannelMapError(f"the stream describes {got.shape[0]} channels; the network takes {expected.shape[0]}")
    distance = np.linalg.norm(expected[:, None, :] - got[None, :, :], axis=-1)  # [network, stream]
    index = np.argmin(distance, axis=1)
    for channel in range(expected.shape[0]):
        if distance[channel, index[channel]] > tolerance_um:
            raise ChannelMapError(f"the network's channel {channel} at ({expected[channel, 0]:g}, "
                                  f"{expected[channel, 1]:g}) µm has no stream channel within {tolerance_um:g} µm "
                                  f"(nearest: column {index[channel]}, {distance[channel, index[channel]]:.1f} µm away)")
    _require_one_to_one(index, "position")
    return index


def _match_ids(expected: np.ndarray, got: np.ndarray) -> np.ndarray:
    expected, got = expected.astype(str), got.astype(str)
    if got.ndim != 1 or got.size != expected.size:
        raise ChannelMapError(f"the stream describes {got.size} channel ids; the network takes {expected.size}")
    if np.unique(got).size != got.size:
        raise ChannelMapError("the stream's channel ids repeat")
    column = {channel_id: i for i, channel_id in enumerate(got.tolist())}
    missing = [channel_id for channel_id in expected.tolist() if channel_id not in column]
    if missing:
        raise ChannelMapError(f"{len(missing)} of the network's channel ids are not in the stream "
                              f"(first: {missing[0]!r})")
    return np.array([column[channel_id] for channel_id in expected.tolist()])


def _require_one_to_one(index: np.ndarray, what: str) -> None:
    values, counts = np.unique(index, return_counts=True)
    if (counts > 1).any():
        column = int(values[counts > 1][0])
        raise ChannelMapError(f"stream column {column} is the nearest {what} of {int(counts.max())} of the network's "
                              f"channels: the stream's channels are not the network's")
