"""Extracellular spike templates as a function of the neuron's position.

Model (all equations closed-form, so a template can be evaluated at any soma position):

Spatial factor f(site) >= 0 (1/µm): the spike's sink current -I at the soma, its return
current +I spread uniformly over a sphere of radius R (`return_radius_um`, the dendritic
field) around the soma:
  sink 'point'  g = 1 / r, r the 3-D soma-site distance;
  sink 'line'   g = (1 / l) ∫ ds / |site - p(s)| over a segment of length l
                (`line_length_um`) along the probe axis centred on the soma (soma + proximal
                dendrite; the line-source approximation of compartmental models), which
                evaluates to (asinh((u + l/2) / rho) - asinh((u - l/2) / rho)) / l, rho the
                site's distance from the segment's axis and u its offset along it;
  f = max(0, g - 1/R). For a point sink this is exact (Gauss's law: the shell's potential is
  1/R inside, and cancels the sink outside), so the field is closed: zero beyond R, decaying
  faster than 1/r before it. With R = None the field is open (f = g, pure 1/r far away),
  which makes footprints span hundreds of µm.
  (A return current spread along a long dendrite was tried first: it produced inverted lobes
  of ~50 % of the peak beside the dendrite and ~100-channel footprints, unlike real units.)

Time course at a site (t in ms, relative to the spike):
  w(t) = -(st / st') exp(-(t - d)² / 2 st'²) + a (sr / sr') exp(-(t - d - m)² / 2 sr'²)
  a sharp negative trough (sigma st) and a slower positive repolarisation (sigma sr = 0.4 m,
  centred m = the trough-to-peak time after it, relative size a). Farther sites see the
  waveform low-passed: st'² = st² + sb², sr'² = sr² + sb² with sb = broadening_ms_per_100um
  x r / 100 (a Gaussian blur: the peak shrinks by st / st', the area is kept), and delayed by
  d = delay_ms_per_100um x r / 100. A cosine taper brings both ends of the window to 0.
  Types: 'exc' broad (trough-to-peak 0.6-0.9 ms, sigma 0.10-0.14 ms, a 0.2-0.35),
  'inh' narrow (0.3-0.45 ms, 0.05-0.075 ms, a 0.35-0.55), drawn uniformly per unit.

Template(site, t) = scale x f(site) x w_site(t). `scale` makes the largest |value| over
channels and samples at zero drift equal to the unit's drawn peak amplitude (uniform in
[min_amplitude_uv, max_amplitude_uv]); the same scale applies at every position, so a unit
drifting between sites changes amplitude the way a real one does. The time axis is shifted
so that the trough on the peak channel (at zero drift) falls exactly on sample `trough_index`
(= ms_before x fs): the ground-truth spike sample is that trough's sample.

Drift: each unit's templates are precomputed on a grid of displacements (multiples of
`displacement_step_um` covering the unit's displacement range) on the contiguous channel
range where the template can exceed `support_fraction` of the peak (channels are ordered by
depth, so the support is a range), and interpolated linearly in displacement per spike.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_gen.config import TemplatesConfig
from data_gen.seeding import stream_rng
from data_gen.units import Units
from esort_jax.config import ConfigError

__all__ = [
    "WaveformShapes",
    "TemplateBank",
    "draw_shapes",
    "spatial_factor",
    "site_waveforms",
    "template_time_ms",
    "build_templates",
    "exact_template",
]

# Relative size of the positive repolarisation peak, per type (drawn uniformly).
_REPOL_RATIO = {"exc": (0.2, 0.35), "inh": (0.35, 0.55)}
_REPOL_SIGMA_PER_T2P = 0.4  # sr = 0.4 x trough-to-peak
_TAPER_START_MS = 0.25
_TAPER_END_MS = 0.5


@dataclasses.dataclass(frozen=True, eq=False)
class WaveformShapes:
    """Per-unit waveform parameters, [N] arrays (ms, µV)."""

    amplitude_uv: np.ndarray
    trough_sigma_ms: np.ndarray
    trough_to_peak_ms: np.ndarray
    repol_ratio: np.ndarray

    @property
    def repol_sigma_ms(self) -> np.ndarray:
        return _REPOL_SIGMA_PER_T2P * self.trough_to_peak_ms


def draw_shapes(config: TemplatesConfig, cell_type: np.ndarray, seed: int) -> WaveformShapes:
    """Draw amplitude and shape of every unit (stream 'templates'/unit index)."""
    n = len(cell_type)
    out = {k: np.empty(n) for k in ("amplitude_uv", "trough_sigma_ms", "trough_to_peak_ms", "repol_ratio")}
    for i, kind in enumerate(cell_type):
        u = stream_rng(seed, "templates", i).random(4)
        sigma = config.exc_trough_sigma_ms if kind == "exc" else config.inh_trough_sigma_ms
        t2p = config.exc_trough_to_peak_ms if kind == "exc" else config.inh_trough_to_peak_ms
        ratio = _REPOL_RATIO[kind]
        out["amplitude_uv"][i] = config.min_amplitude_uv + u[0] * (config.max_amplitude_uv - config.min_amplitude_uv)
        out["trough_sigma_ms"][i] = sigma[0] + u[1] * (sigma[1] - sigma[0])
        out["trough_to_peak_ms"][i] = t2p[0] + u[2] * (t2p[1] - t2p[0])
        out["repol_ratio"][i] = ratio[0] + u[3] * (ratio[1] - ratio[0])
    return WaveformShapes(**out)


def template_time_ms(config: TemplatesConfig, fs: float) -> tuple[np.ndarray, int]:
    """(t [L] ms relative to the trough, trough_index) of the template window."""
    before = int(round(config.ms_before * fs / 1e3))
    after = int(round(config.ms_after * fs / 1e3))
    return (np.arange(before + after) - before) * (1e3 / fs), before


def _taper(t_ms: np.ndarray) -> np.ndarray:
    t0, t1 = t_ms[0], t_ms[-1]
    up = np.clip((t_ms - t0) / _TAPER_START_MS, 0.0, 1.0)
    down = np.clip((t1 - t_ms) / _TAPER_END_MS, 0.0, 1.0)
    return (0.5 - 0.5 * np.cos(np.pi * up)) * (0.5 - 0.5 * np.cos(np.pi * down))


def spatial_factor(
    config: TemplatesConfig, soma_um: np.ndarray, sites_um: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(f [..., C], r [..., C]) for somas [..., 3] and sites [C, 2] (see module docstring)."""
    soma = np.asarray(soma_um, dtype=np.float64)[..., None, :]  # [..., 1, 3]
    sites = np.asarray(sites_um, dtype=np.float64)
    dx = sites[:, 0] - soma[..., 0]
    u = sites[:, 1] - soma[..., 1]
    rho2 = dx**2 + soma[..., 2] ** 2
    r = np.sqrt(rho2 + u**2)
    if config.model == "line":
        half = config.line_length_um / 2
        rho = np.sqrt(rho2)
        sink = (np.arcsinh((u + half) / rho) - np.arcsinh((u - half) / rho)) / config.line_length_um
    else:
        sink = 1.0 / r
    if config.return_radius_um is None:
        return sink, r
    return np.maximum(sink - 1.0 / config.return_radius_um, 0.0), r


def site_waveforms(
    config: TemplatesConfig,
    shapes: WaveformShapes,
    unit: int,
    r_um: np.ndarray,
    t_ms: np.ndarray,
    taper: bool = True,
) -> np.ndarray:
    """w [..., L, C] (trough -1 before blurring) at soma-site distances r [..., C], times t [L].

    The taper brings the window's two ends (t_ms[0], t_ms[-1]) to zero.
    """
    r = np.asarray(r_um, dtype=np.float64)[..., None, :]
    t = np.asarray(t_ms, dtype=np.float64)[:, None]
    st = shapes.trough_sigma_ms[unit]
    sr = shapes.repol_sigma_ms[unit]
    m = shapes.trough_to_peak_ms[unit]
    blur2 = (config.broadening_ms_per_100um * r / 100.0) ** 2
    delay = config.delay_ms_per_100um * r / 100.0
    st2 = st**2 + blur2
    sr2 = sr**2 + blur2
    tt = t - delay
    trough = np.sqrt(st**2 / st2) * np.exp(-(tt**2) / (2.0 * st2))
    repol = shapes.repol_ratio[unit] * np.sqrt(sr**2 / sr2) * np.exp(-((tt - m) ** 2) / (2.0 * sr2))
    w = repol - trough
    return w * _taper(np.asarray(t_ms, dtype=np.float64))[:, None] if taper else w


def _trough_offset_ms(config, shapes, unit, r_peak) -> float:
    """Time (ms) of the trough (the negative phase of w) at distance r_peak, on a 0.5 µs grid.

    The taper is 1 around the trough, so it is left out here.
    """
    fine = np.arange(-0.5, 1.0, 5e-4)
    w = site_waveforms(config, shapes, unit, np.array([r_peak]), fine, taper=False)[:, 0]
    return float(fine[np.argmin(w)])


@dataclasses.dataclass(frozen=True, eq=False)
class TemplateBank:
    """Per-unit templates on a displacement grid, in µV, restricted to each unit's support.

    waveforms[i]: float32 [G_i, L, channel_stop[i] - channel_start[i]] at displacements
      grid_start_um[i] + g * step_um, g = 0..G_i-1 (a single entry for a static unit).
    trough_index: template sample that lands on the ground-truth spike sample.
    peak_channel, peak_amplitude_uv: at zero displacement.
    scale [N] (µV per unit of f x w) and time_offset_ms [N] (trough alignment): what
      `exact_template` needs to evaluate a unit's template at any position.
    """

    waveforms: list
    grid_start_um: np.ndarray
    step_um: float
    channel_start: np.ndarray
    channel_stop: np.ndarray
    trough_index: int
    num_channels: int
    peak_channel: np.ndarray
    peak_amplitude_uv: np.ndarray
    scale: np.ndarray
    time_offset_ms: np.ndarray

    @property
    def num_units(self) -> int:
        return len(self.waveforms)

    @property
    def num_samples(self) -> int:
        return int(self.waveforms[0].shape[1]) if self.waveforms else 0

    def grid_position(self, unit: int, displacement_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index g, fraction f) so the template is (1 - f) T[g] + f T[g + 1] (clamped to the grid)."""
        count = self.waveforms[unit].shape[0]
        pos = (np.asarray(displacement_um, dtype=np.float64) - self.grid_start_um[unit]) / self.step_um
        pos = np.clip(pos, 0.0, count - 1)
        index = np.minimum(np.floor(pos).astype(np.int64), max(count - 2, 0))
        return index, (pos - index).astype(np.float32)

    def waveform(self, unit: int, displacement_um: float = 0.0) -> np.ndarray:
        """float32 [L, support] template of `unit` at a displacement (µm), interpolated."""
        bank = self.waveforms[unit]
        if bank.shape[0] == 1:
            return bank[0].copy()
        g, f = self.grid_position(unit, displacement_um)
        g, f = int(g), np.float32(f)
        return bank[g] * (np.float32(1.0) - f) + bank[g + 1] * f

    def dense(self, unit: int, displacement_um: float = 0.0) -> np.ndarray:
        """float32 [L, C] template on all channels (zeros outside the support)."""
        out = np.zeros((self.num_samples, self.num_channels), np.float32)
        out[:, self.channel_start[unit] : self.channel_stop[unit]] = self.waveform(unit, displacement_um)
        return out

    def nbytes(self) -> int:
        return int(sum(w.nbytes for w in self.waveforms))


def build_templates(
    config: TemplatesConfig,
    units: Units,
    shapes: WaveformShapes,
    channel_positions: np.ndarray,
    fs: float,
    displacement_range_um: np.ndarray | None = None,
) -> TemplateBank:
    """Precompute every unit's templates over its displacement range [N, 2] (None: static)."""
    sites = np.asarray(channel_positions, dtype=np.float64)
    n_units = units.num_units
    t_ms, trough_index = template_time_ms(config, fs)
    step = float(config.displacement_step_um)
    if displacement_range_um is None:
        displacement_range_um = np.zeros((n_units, 2))
    waveforms, grid_start = [], np.zeros(n_units)
    c_start = np.zeros(n_units, np.int64)
    c_stop = np.zeros(n_units, np.int64)
    peak_channel = np.zeros(n_units, np.int64)
    peak_amplitude = np.zeros(n_units)
    scales = np.zeros(n_units)
    offsets = np.zeros(n_units)
    for i in range(n_units):
        soma = units.positions_um[i]
        lo = min(float(displacement_range_um[i, 0]), 0.0)
        hi = max(float(displacement_range_um[i, 1]), 0.0)
        g0, g1 = int(np.floor(lo / step + 1e-9)), int(np.ceil(hi / step - 1e-9))
        grid = np.arange(g0, g1 + 1) * step
        grid_start[i] = grid[0]

        # Zero displacement: the peak channel is among the sites with the largest spatial
        # factor (the blur shrinks w with distance too); the trough time there aligns the window.
        f0, r0 = spatial_factor(config, soma, sites)
        near = np.flatnonzero(f0 >= 0.5 * f0.max())
        w0 = site_waveforms(config, shapes, i, r0[near], t_ms)
        pc = int(near[np.argmax(np.max(np.abs(f0[near] * w0), axis=0))])
        tau = _trough_offset_ms(config, shapes, i, r0[pc])
        t_aligned = t_ms + tau
        peak = float(np.max(np.abs(f0[pc] * site_waveforms(config, shapes, i, r0[pc : pc + 1], t_aligned))))
        if not peak > 0:
            raise ConfigError(
                f"templates.return_radius_um: unit {i} at {np.round(soma, 1).tolist()} µm sees no site "
                f"within the return radius ({config.return_radius_um} µm); raise it above the "
                "largest soma distance (units.z_range_um)"
            )
        scale = shapes.amplitude_uv[i] / peak

        # Support: |w| <= 1, so |f| < fraction x peak everywhere means the channel never matters.
        somas = soma[None, :] + np.outer(grid, [0.0, 1.0, 0.0])
        f_grid, r_grid = spatial_factor(config, somas, sites)
        keep = np.flatnonzero(np.max(np.abs(f_grid), axis=0) >= config.support_fraction * peak)
        c0 = int(min(keep.min(), pc)) if keep.size else pc
        c1 = int(max(keep.max(), pc)) + 1 if keep.size else pc + 1
        bank = (f_grid[:, None, c0:c1] * scale) * site_waveforms(config, shapes, i, r_grid[:, c0:c1], t_aligned)
        waveforms.append(bank.astype(np.float32))
        c_start[i], c_stop[i] = c0, c1
        peak_channel[i] = pc
        zero = int(np.argmin(np.abs(grid)))
        peak_amplitude[i] = float(np.max(np.abs(waveforms[-1][zero])))
        scales[i] = scale
        offsets[i] = tau
    return TemplateBank(
        waveforms=waveforms,
        grid_start_um=grid_start,
        step_um=step,
        channel_start=c_start,
        channel_stop=c_stop,
        trough_index=trough_index,
        num_channels=sites.shape[0],
        peak_channel=peak_channel,
        peak_amplitude_uv=peak_amplitude,
        scale=scales,
        time_offset_ms=offsets,
    )


def exact_template(
    config: TemplatesConfig,
    shapes: WaveformShapes,
    bank: TemplateBank,
    unit: int,
    soma_um: np.ndarray,
    channel_positions: np.ndarray,
    fs: float,
) -> np.ndarray:
    """float64 [L, C] µV template of `unit` with its soma at `soma_um`, evaluated directly
    (no grid, no support cut): the reference the bank's interpolation approximates."""
    t_ms, _ = template_time_ms(config, fs)
    f, r = spatial_factor(config, soma_um, channel_positions)
    w = site_waveforms(config, shapes, unit, r, t_ms + bank.time_offset_ms[unit])
    return bank.scale[unit] * f * w
