"""Typed configuration of the synthesiser: one frozen dataclass per step.

Built from Hydra YAML with `esort_jax.config.from_dict(SynthesisConfig, mapping, "data")`,
which checks every key and calls each dataclass's `validate(where)`; errors name the dotted
key ("data.duration_s: must be > 0; got -1.0"). Fields are plain values so the resolved
config round-trips through JSON (`esort_jax.config.to_dict`).

Defaults follow the E-Sort paper's MEArec recordings (Neuropixels, 32 kHz, 10 µV noise,
templates 40-300 µV, 10 000 neurons/mm³, drift ~10 µm/min up to 30 µm, jumps up to 15 µm
every ~60 s) where the paper states a number, and MEArec's defaults otherwise (neurons 10-80
µm from the probe plane, 30 µm overhang, 25 µm minimum soma distance, 2 ms refractory period,
exc 5 Hz / inh 15 Hz).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Literal

from esort_jax.config import ConfigError, require

__all__ = [
    "ConfigError",
    "KNOWN_PROBES",
    "ProbeConfig",
    "UnitsConfig",
    "TemplatesConfig",
    "FiringConfig",
    "DriftConfig",
    "NoiseConfig",
    "SynthesisConfig",
]

# Probe names `data_gen.probes.make_probe` builds without a file (see probes.py).
KNOWN_PROBES = ("np1", "np2", "dense")


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _positive(where: str, name: str, value: float, allow_zero: bool = False) -> None:
    ok = _finite(value) and (value >= 0 if allow_zero else value > 0)
    require(ok, _key(where, name), f"must be {'>= 0' if allow_zero else '> 0'}; got {value!r}")


def _range(where: str, name: str, pair: tuple[float, float], low: float | None = None) -> None:
    key = _key(where, name)
    require(len(pair) == 2 and all(_finite(v) for v in pair), key, f"must be two numbers; got {pair!r}")
    require(pair[0] <= pair[1], key, f"minimum must be <= maximum; got {list(pair)}")
    if low is not None:
        require(pair[0] >= low, key, f"values must be >= {low}; got {list(pair)}")


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Which sites to simulate.

    name: 'np1' (Neuropixels 1.0 bank 0: 384 sites, 4 staggered columns, 20 µm rows),
      'np2' (Neuropixels 2.0 single shank: 384 sites, 2 columns, 15 µm rows),
      'dense' (Neuropixels-Ultra-like 8 x 48 sites at 6 µm pitch, as in the E-Sort paper),
      or the path of a probeinterface JSON file.
    n_channels / first_channel: keep the contiguous block [first, first + n) of the sites
      ordered by depth then x (None = all sites).
    positions_um: explicit [C, 2] site positions (x, y) in µm; when given, `name` is ignored.
      Used to synthesise pretraining data on the geometry of an existing recording.
    """

    name: str = "np1"
    n_channels: int | None = None
    first_channel: int = 0
    positions_um: tuple[tuple[float, float], ...] | None = None

    def validate(self, where: str = "") -> None:
        if self.positions_um is None:
            is_file = self.name.endswith(".json")
            require(
                self.name in KNOWN_PROBES or is_file,
                _key(where, "name"),
                f"unknown probe {self.name!r}; known probes: {', '.join(KNOWN_PROBES)} "
                "(or the path of a probeinterface .json file)",
            )
            if is_file:
                require(os.path.isfile(self.name), _key(where, "name"), f"probe file {self.name!r} not found")
        else:
            require(len(self.positions_um) > 0, _key(where, "positions_um"), "must list at least one site")
            require(
                all(len(p) == 2 and all(_finite(v) for v in p) for p in self.positions_um),
                _key(where, "positions_um"),
                "must be a list of [x, y] pairs of finite numbers (µm)",
            )
        if self.n_channels is not None:
            require(self.n_channels > 0, _key(where, "n_channels"), f"must be > 0; got {self.n_channels}")
        require(self.first_channel >= 0, _key(where, "first_channel"), f"must be >= 0; got {self.first_channel}")


@dataclasses.dataclass(frozen=True)
class UnitsConfig:
    """Where the neurons are and what kind they are.

    Somas are uniform in the slab z in `z_range_um` (distance from the probe plane) and
    x, y within the sites' bounding box grown by `overhang_um` on every side.
    The count is round(density_per_mm3 x slab volume) unless `n_units` is given.
    `min_distance_um`: minimum soma-to-soma distance (MEArec's default 25 µm), enforced by
    rejection sampling so two units never sit on top of each other.
    """

    density_per_mm3: float = 10000.0
    n_units: int | None = None
    z_range_um: tuple[float, float] = (10.0, 80.0)
    overhang_um: float = 30.0
    inhibitory_fraction: float = 0.2
    min_distance_um: float = 25.0

    def validate(self, where: str = "") -> None:
        _positive(where, "density_per_mm3", self.density_per_mm3)
        if self.n_units is not None:
            require(self.n_units > 0, _key(where, "n_units"), f"must be > 0; got {self.n_units}")
        _range(where, "z_range_um", self.z_range_um, low=1.0)
        _positive(where, "overhang_um", self.overhang_um, allow_zero=True)
        require(
            _finite(self.inhibitory_fraction) and 0.0 <= self.inhibitory_fraction <= 1.0,
            _key(where, "inhibitory_fraction"),
            f"must be in [0, 1]; got {self.inhibitory_fraction!r}",
        )
        _positive(where, "min_distance_um", self.min_distance_um, allow_zero=True)


@dataclasses.dataclass(frozen=True)
class TemplatesConfig:
    """Extracellular waveform model (see templates.py for the equations).

    model: the geometry of the spike's sink current: 'point' (at the soma, potential ~ 1/r)
      or 'line' (spread uniformly along a `line_length_um` segment of soma + proximal
      dendrite along the probe axis, centred on the soma: footprints elongated in depth).
    return_radius_um: the return current is spread over a sphere of this radius around the
      soma (the dendritic field), which closes the field: the potential is sink - 1/R inside
      and 0 beyond (exact for a point sink, by Gauss's law), so footprints are compact and
      decay faster than 1/r, as for real neurons. None: open field (pure 1/r), whose
      footprints span hundreds of µm (slow; support limited only by support_fraction).
    Peak |template| over the channels, at zero drift, is drawn uniformly in
    [min_amplitude_uv, max_amplitude_uv].
    Per-type shape ranges (drawn uniformly per unit): trough-to-peak time and the Gaussian
      sigma of the trough (FWHM = 2.355 sigma).
    broadening_ms_per_100um: extra Gaussian temporal smoothing (sigma) per 100 µm of
      soma-site distance (farther sites see smaller AND broader waveforms).
    delay_ms_per_100um: propagation delay per 100 µm of soma-site distance.
    support_fraction: channels whose |template| stays below this fraction of the unit's peak
      (at every displacement) are not touched.
    displacement_step_um: templates are precomputed on a grid of this step over each unit's
      displacement range and interpolated linearly.
    amplitude_jitter_sd: per-spike amplitude factor exp(sd * N(0, 1)) (median 1).
    """

    model: Literal["point", "line"] = "point"
    line_length_um: float = 30.0
    return_radius_um: float | None = 120.0
    min_amplitude_uv: float = 40.0
    max_amplitude_uv: float = 300.0
    ms_before: float = 1.0
    ms_after: float = 2.0
    exc_trough_to_peak_ms: tuple[float, float] = (0.6, 0.9)
    inh_trough_to_peak_ms: tuple[float, float] = (0.3, 0.45)
    exc_trough_sigma_ms: tuple[float, float] = (0.10, 0.14)
    inh_trough_sigma_ms: tuple[float, float] = (0.05, 0.075)
    broadening_ms_per_100um: float = 0.05
    delay_ms_per_100um: float = 0.1
    support_fraction: float = 0.02
    displacement_step_um: float = 2.0
    amplitude_jitter_sd: float = 0.1

    def validate(self, where: str = "") -> None:
        _positive(where, "min_amplitude_uv", self.min_amplitude_uv)
        _positive(where, "max_amplitude_uv", self.max_amplitude_uv)
        require(
            self.min_amplitude_uv <= self.max_amplitude_uv,
            _key(where, "min_amplitude_uv"),
            f"must be <= max_amplitude_uv ({self.max_amplitude_uv}); got {self.min_amplitude_uv}",
        )
        _positive(where, "ms_before", self.ms_before)
        _positive(where, "ms_after", self.ms_after)
        require(
            self.ms_before + self.ms_after >= 3.0 - 1e-9,
            _key(where, "ms_after"),
            f"templates must span >= 3 ms; got ms_before + ms_after = {self.ms_before + self.ms_after}",
        )
        for name in ("exc_trough_to_peak_ms", "inh_trough_to_peak_ms", "exc_trough_sigma_ms", "inh_trough_sigma_ms"):
            _range(where, name, getattr(self, name), low=1e-3)
        for name in ("exc_trough_to_peak_ms", "inh_trough_to_peak_ms"):
            require(
                getattr(self, name)[1] < self.ms_after,
                _key(where, name),
                f"trough-to-peak must end before the template does ({self.ms_after} ms after the trough)",
            )
        _positive(where, "broadening_ms_per_100um", self.broadening_ms_per_100um, allow_zero=True)
        _positive(where, "delay_ms_per_100um", self.delay_ms_per_100um, allow_zero=True)
        _positive(where, "line_length_um", self.line_length_um)
        if self.return_radius_um is not None:
            _positive(where, "return_radius_um", self.return_radius_um)
        require(
            _finite(self.support_fraction) and 0.0 <= self.support_fraction < 1.0,
            _key(where, "support_fraction"),
            f"must be in [0, 1); got {self.support_fraction!r}",
        )
        _positive(where, "displacement_step_um", self.displacement_step_um)
        _positive(where, "amplitude_jitter_sd", self.amplitude_jitter_sd, allow_zero=True)


@dataclasses.dataclass(frozen=True)
class FiringConfig:
    """Spike trains: renewal processes with an absolute refractory period.

    Unit rates are lognormal across units with the given mean per type and coefficient of
    variation `rate_cv`, clipped to [min_rate_hz, max_rate_hz]. Inter-spike intervals are
    refractory_ms + Exponential(mean 1/rate - refractory), so the mean rate is the drawn rate
    and no interval is shorter than the refractory period.
    """

    exc_rate_hz: float = 5.0
    inh_rate_hz: float = 15.0
    rate_cv: float = 0.3
    min_rate_hz: float = 0.5
    max_rate_hz: float = 100.0
    refractory_ms: float = 2.0

    def validate(self, where: str = "") -> None:
        for name in ("exc_rate_hz", "inh_rate_hz", "min_rate_hz", "max_rate_hz", "refractory_ms"):
            _positive(where, name, getattr(self, name))
        _positive(where, "rate_cv", self.rate_cv, allow_zero=True)
        require(
            self.min_rate_hz <= self.max_rate_hz,
            _key(where, "min_rate_hz"),
            f"must be <= max_rate_hz ({self.max_rate_hz}); got {self.min_rate_hz}",
        )
        limit = 1000.0 / self.refractory_ms
        require(
            self.max_rate_hz < limit,
            _key(where, "max_rate_hz"),
            f"must be < 1 / refractory period = {limit:g} Hz; got {self.max_rate_hz}",
        )


@dataclasses.dataclass(frozen=True)
class DriftConfig:
    """Movement of the neurons along the probe axis (see drift.py).

    mode: 'none'; 'slow' (rigid triangle wave at slow_velocity_um_per_min, peak-to-peak
      slow_amplitude_um, starting at 0); 'fast' (rigid jumps of up to fast_jump_um every
      ~fast_interval_s, plus the slow drift when fast_with_slow); 'nonrigid' (the slow time
      course times a depth profile 1 - m (1 - sin(2 pi y / wavelength + phase)) / 2).
    """

    mode: Literal["none", "slow", "fast", "nonrigid"] = "none"
    slow_velocity_um_per_min: float = 10.0
    slow_amplitude_um: float = 30.0
    fast_jump_um: float = 15.0
    fast_interval_s: float = 60.0
    fast_with_slow: bool = False
    nonrigid_modulation: float = 1.0
    nonrigid_wavelength_um: float | None = None
    grid_step_s: float = 1.0

    def validate(self, where: str = "") -> None:
        _positive(where, "slow_velocity_um_per_min", self.slow_velocity_um_per_min, allow_zero=True)
        _positive(where, "slow_amplitude_um", self.slow_amplitude_um, allow_zero=True)
        _positive(where, "fast_jump_um", self.fast_jump_um, allow_zero=True)
        _positive(where, "fast_interval_s", self.fast_interval_s)
        require(
            _finite(self.nonrigid_modulation) and 0.0 <= self.nonrigid_modulation <= 1.0,
            _key(where, "nonrigid_modulation"),
            f"must be in [0, 1]; got {self.nonrigid_modulation!r}",
        )
        if self.nonrigid_wavelength_um is not None:
            _positive(where, "nonrigid_wavelength_um", self.nonrigid_wavelength_um)
        _positive(where, "grid_step_s", self.grid_step_s)


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    """Gaussian background noise (see noise.py).

    std_uv: standard deviation on every channel (exact in expectation).
    spatial_mix / spatial_length_um: each channel is (1 - mix) of its own white noise plus
      mix x a Gaussian-weighted (length scale) sum over nearby sites, renormalised to unit
      variance; 0 gives spatially white noise.
    lowpass_hz: band-limit the noise like a filtered recording (None: white in time).
    block_samples: noise is computed in blocks of this many samples at the internal (low)
      rate from white noise seeded by (seed, stream, sub-block index): random access.
    normal_sampler: 'lookup' (16-bit inverse-CDF table, ~3x faster) or 'ziggurat' (numpy's
      standard_normal); see noise.py.
    """

    std_uv: float = 10.0
    spatial_mix: float = 0.5
    spatial_length_um: float = 20.0
    lowpass_hz: float | None = 6000.0
    block_samples: int = 4096
    normal_sampler: Literal["lookup", "ziggurat"] = "lookup"

    def validate(self, where: str = "") -> None:
        _positive(where, "std_uv", self.std_uv, allow_zero=True)
        require(
            _finite(self.spatial_mix) and 0.0 <= self.spatial_mix <= 1.0,
            _key(where, "spatial_mix"),
            f"must be in [0, 1]; got {self.spatial_mix!r}",
        )
        _positive(where, "spatial_length_um", self.spatial_length_um)
        if self.lowpass_hz is not None:
            _positive(where, "lowpass_hz", self.lowpass_hz)
        require(self.block_samples >= 64, _key(where, "block_samples"), f"must be >= 64; got {self.block_samples}")


@dataclasses.dataclass(frozen=True)
class SynthesisConfig:
    """Everything `data_gen.synthesize` needs; same config and seed give the same bytes."""

    duration_s: float = 10.0
    sampling_frequency: float = 32000.0
    seed: int = 0
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)
    units: UnitsConfig = dataclasses.field(default_factory=UnitsConfig)
    templates: TemplatesConfig = dataclasses.field(default_factory=TemplatesConfig)
    firing: FiringConfig = dataclasses.field(default_factory=FiringConfig)
    drift: DriftConfig = dataclasses.field(default_factory=DriftConfig)
    noise: NoiseConfig = dataclasses.field(default_factory=NoiseConfig)

    def validate(self, where: str = "") -> None:
        _positive(where, "duration_s", self.duration_s)
        _positive(where, "sampling_frequency", self.sampling_frequency)
        require(
            isinstance(self.seed, int) and self.seed >= 0,
            _key(where, "seed"),
            f"must be an integer >= 0; got {self.seed!r}",
        )
        require(
            self.duration_s * self.sampling_frequency >= 1,
            _key(where, "duration_s"),
            f"must give at least one sample; got {self.duration_s} s at {self.sampling_frequency} Hz",
        )
        for name in ("probe", "units", "templates", "firing", "drift", "noise"):
            getattr(self, name).validate(_key(where, name))
        radius = self.templates.return_radius_um
        require(
            radius is None or radius > self.units.z_range_um[1],
            _key(where, "templates.return_radius_um"),
            f"must exceed the largest soma distance units.z_range_um[1] = {self.units.z_range_um[1]} µm "
            f"(beyond it a neuron's field is zero on every site); got {radius}",
        )
        require(
            self.firing.refractory_ms * 1e-3 * self.sampling_frequency >= 1,
            _key(where, "firing.refractory_ms"),
            f"must be at least one sample ({1e3 / self.sampling_frequency:g} ms)",
        )

    def on_geometry(self, positions_um, sampling_frequency: float) -> "SynthesisConfig":
        """This config on another probe's sites (all of them, whatever block `probe.n_channels` /
        `probe.first_channel` selected from a named probe) and sampling rate: e.g. a recording's
        own, to make pretraining data for its probe."""
        positions = tuple(tuple(float(v) for v in p) for p in positions_um)
        probe = dataclasses.replace(self.probe, positions_um=positions, n_channels=None, first_channel=0)
        return dataclasses.replace(self, probe=probe, sampling_frequency=float(sampling_frequency))
