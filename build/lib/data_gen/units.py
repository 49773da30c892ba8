"""Neurons around the probe: soma positions and cell types.

Coordinates (µm): x across the shank, y along it (the probe's own axis; drift moves units
along y), z the distance from the probe plane. Somas are uniform in the slab
[x_min - overhang, x_max + overhang] x [y_min - overhang, y_max + overhang] x z_range_um,
where x/y bounds are those of the sites; this is MEArec's placement (x_lim = [10, 80] µm
from the plane, 30 µm beyond the probe's edges). Somas closer than `min_distance_um` to an
already placed soma are rejected and redrawn (random sequential placement), so the first k
units do not depend on how many are placed after them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_gen.config import UnitsConfig
from data_gen.seeding import stream_rng
from esort_jax.config import ConfigError

__all__ = ["Units", "slab_bounds", "slab_volume_mm3", "count_units", "place_units"]

_BATCH = 256  # candidates drawn per batch (fixed, so the candidate stream does not depend on N)


@dataclasses.dataclass(frozen=True, eq=False)
class Units:
    """positions_um [N, 3] (x, y, z) soma positions at zero drift; cell_type [N] 'exc' / 'inh'."""

    positions_um: np.ndarray
    cell_type: np.ndarray

    @property
    def num_units(self) -> int:
        return int(self.positions_um.shape[0])

    @property
    def is_inhibitory(self) -> np.ndarray:
        return self.cell_type == "inh"


def slab_bounds(config: UnitsConfig, channel_positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low [3], high [3]) corners of the volume somas are drawn in."""
    positions = np.asarray(channel_positions, dtype=np.float64)
    low = np.array([*(positions.min(axis=0) - config.overhang_um), config.z_range_um[0]])
    high = np.array([*(positions.max(axis=0) + config.overhang_um), config.z_range_um[1]])
    return low, high


def slab_volume_mm3(config: UnitsConfig, channel_positions: np.ndarray) -> float:
    low, high = slab_bounds(config, channel_positions)
    return float(np.prod(high - low)) * 1e-9


def count_units(config: UnitsConfig, channel_positions: np.ndarray, where: str = "units") -> int:
    """`n_units` if given, else round(density x slab volume) (at least 1)."""
    if config.n_units is not None:
        return int(config.n_units)
    count = int(round(config.density_per_mm3 * slab_volume_mm3(config, channel_positions)))
    if count < 1:
        raise ConfigError(
            f"{where}.density_per_mm3: {config.density_per_mm3} neurons/mm³ in a "
            f"{slab_volume_mm3(config, channel_positions):.3g} mm³ volume gives no unit; "
            "raise the density or set n_units"
        )
    return count


def place_units(
    config: UnitsConfig, channel_positions: np.ndarray, seed: int, where: str = "units"
) -> Units:
    """Draw soma positions and cell types (streams 'units'/0 and 'units'/1)."""
    num_units = count_units(config, channel_positions, where)
    low, high = slab_bounds(config, channel_positions)
    rng = stream_rng(seed, "units", 0)
    min_sq = config.min_distance_um**2
    placed = np.empty((num_units, 3))
    count, drawn, max_draws = 0, 0, 200 * num_units + 10 * _BATCH
    while count < num_units:
        if drawn >= max_draws:
            raise ConfigError(
                f"{where}.min_distance_um: could place only {count} of {num_units} somas at least "
                f"{config.min_distance_um} µm apart; lower the density or the minimum distance"
            )
        candidates = rng.uniform(low, high, size=(_BATCH, 3))
        drawn += _BATCH
        for candidate in candidates:
            if min_sq > 0 and count:
                d2 = np.sum((placed[:count] - candidate) ** 2, axis=1)
                if d2.min() < min_sq:
                    continue
            placed[count] = candidate
            count += 1
            if count == num_units:
                break
    draws = stream_rng(seed, "units", 1).random(num_units)
    cell_type = np.where(draws < config.inhibitory_fraction, "inh", "exc")
    return Units(positions_um=placed, cell_type=cell_type)
