"""Probe geometries (probeinterface objects), channels ordered by depth (y) then x.

The depth order is what the rest of data_gen relies on: the sites a unit reaches form a
contiguous channel range (spikes are added with one slice `traces[t0:t1, c0:c1]`), and the
noise's spatial mixing matrix is banded.

Everything is built offline: Neuropixels layouts come from probeinterface's own tables
(`build_neuropixels_probe`), never from `probeinterface.get_probe` (which downloads).
"""

from __future__ import annotations

import os

import numpy as np
import probeinterface
from probeinterface import Probe

from data_gen.config import KNOWN_PROBES, ProbeConfig
from esort_jax.config import ConfigError

__all__ = [
    "KNOWN_PROBES",
    "make_probe",
    "make_probe_from_positions",
    "probe_from_config",
    "order_by_depth",
]

_BANK_SIZE = 384  # Neuropixels read-out channels: bank 0 is the first 384 sites.


def order_by_depth(probe: Probe) -> Probe:
    """A copy of `probe` with contacts sorted by y, then x; device channels 0..C-1 in that order."""
    positions = np.asarray(probe.contact_positions, dtype=np.float64)
    order = np.lexsort((positions[:, 0], positions[:, 1]))
    ordered = probe.get_slice(order)
    ordered.set_device_channel_indices(np.arange(ordered.get_contact_count()))
    return ordered


def _neuropixels(model: str) -> Probe:
    from probeinterface.neuropixels_tools import build_neuropixels_probe

    probe = build_neuropixels_probe(model)
    return probe.get_slice(np.arange(_BANK_SIZE))


def _dense() -> Probe:
    # Neuropixels-Ultra-like: 8 columns x 48 rows of 5 µm square sites at 6 µm pitch.
    probe = probeinterface.generate_multi_columns_probe(
        num_columns=8,
        num_contact_per_column=48,
        xpitch=6.0,
        ypitch=6.0,
        contact_shapes="square",
        contact_shape_params={"width": 5.0},
    )
    probe.annotate(model_name="dense-8x48-6um", description="Neuropixels-Ultra-like 8 x 48 sites, 6 µm pitch")
    return probe


def _base_probe(name: str, key: str) -> Probe:
    if name == "np1":
        return _neuropixels("NP1000")
    if name == "np2":
        return _neuropixels("NP2000")
    if name == "dense":
        return _dense()
    if name.endswith(".json"):
        if not os.path.isfile(name):
            raise ConfigError(f"{key}: probe file {name!r} not found")
        group = probeinterface.read_probeinterface(name)
        if len(group.probes) != 1:
            raise ConfigError(f"{key}: {name!r} holds {len(group.probes)} probes; expected exactly one")
        return group.probes[0]
    raise ConfigError(
        f"{key}: unknown probe {name!r}; known probes: {', '.join(KNOWN_PROBES)} "
        "(or the path of a probeinterface .json file)"
    )


def _block(probe: Probe, n_channels: int | None, first_channel: int, key: str) -> Probe:
    total = probe.get_contact_count()
    n = total - first_channel if n_channels is None else n_channels
    if first_channel < 0 or n <= 0 or first_channel + n > total:
        raise ConfigError(
            f"{key}: sites [{first_channel}, {first_channel + n}) do not fit in a probe of {total} sites"
        )
    if first_channel == 0 and n == total:
        return probe
    block = probe.get_slice(np.arange(first_channel, first_channel + n))
    block.set_device_channel_indices(np.arange(n))
    return block


def make_probe(
    name: str = "np1", n_channels: int | None = None, first_channel: int = 0, where: str = "probe"
) -> Probe:
    """A probe by name ('np1', 'np2', 'dense' or a probeinterface JSON path), depth-ordered.

    With `n_channels`, keep the contiguous block of sites [first_channel, first_channel +
    n_channels) of the depth-ordered sites (e.g. a 16-channel NP1 stretch for tests).
    """
    probe = order_by_depth(_base_probe(name, f"{where}.name"))
    return _block(probe, n_channels, first_channel, f"{where}.n_channels")


def make_probe_from_positions(positions_um, contact_radius_um: float = 6.0) -> Probe:
    """A planar probe with circular sites at the given [C, 2] (x, y) µm positions, depth-ordered.

    Channel i of the result is the i-th site in (y, x) order; to keep the caller's order
    pass positions that are already sorted by depth then x.
    """
    positions = np.asarray(positions_um, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] < 2 or positions.shape[0] == 0:
        raise ValueError(f"positions must be [C, 2] (x, y) µm; got shape {positions.shape}")
    positions = positions[:, -2:] if positions.shape[1] == 3 else positions[:, :2]
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions must be finite")
    unique = np.unique(positions, axis=0)
    if unique.shape[0] != positions.shape[0]:
        raise ValueError("positions must be distinct (two sites at the same place)")
    probe = Probe(ndim=2, si_units="um")
    probe.set_contacts(positions=positions, shapes="circle", shape_params={"radius": contact_radius_um})
    probe.create_auto_shape(probe_type="tip")
    return order_by_depth(probe)


def probe_from_config(config: ProbeConfig, where: str = "probe") -> Probe:
    """The probe a `ProbeConfig` describes (explicit positions win over the name)."""
    if config.positions_um is not None:
        probe = make_probe_from_positions(config.positions_um)
        return _block(probe, config.n_channels, config.first_channel, f"{where}.n_channels")
    return make_probe(config.name, config.n_channels, config.first_channel, where=where)
