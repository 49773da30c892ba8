"""Named random streams: one numpy Generator per (seed, step, key...), never the global RNG.

Every step draws from its own stream, and per-unit draws from a per-unit sub-stream, so
changing one knob (the drift mode, the noise level, the duration, the number of units)
leaves the other steps' draws alone: a longer recording with the same seed has the same
spikes in the common prefix, adding units does not move the existing ones.
"""

from __future__ import annotations

import numpy as np

__all__ = ["STREAMS", "stream_rng"]

STREAMS = {
    "units": 1,
    "templates": 2,
    "firing": 3,
    "drift": 4,
    "noise": 5,
    "jitter": 6,
}


def stream_rng(seed: int, stream: str, *keys: int) -> np.random.Generator:
    """`np.random.default_rng([seed, STREAMS[stream], *keys])` (keys must be >= 0 integers)."""
    return np.random.default_rng([int(seed), STREAMS[stream], *(int(k) for k in keys)])
