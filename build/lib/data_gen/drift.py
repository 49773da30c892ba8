"""Movement of the neurons along the probe axis (y) over time.

Displacements (µm, + = towards larger y) on a time grid of `grid_step_s`, linear in between
(`esort_jax.recording.Drift`). Every mode starts at displacement 0, so the unit table's
positions are the positions at time 0.

  slow      rigid triangle wave: speed slow_velocity_um_per_min (paper: ~10 µm/min), between
            ±slow_amplitude_um / 2 (paper: up to 30 µm), first direction random.
  fast      rigid jumps at intervals of fast_interval_s x U(0.75, 1.25) (paper: ~60 s); each
            jump moves by U(0.5, 1) x fast_jump_um (paper: up to 15 µm) up or down at random,
            turned around if it would leave ±fast_jump_um; a jump takes one sample (two grid
            points one sample apart). With fast_with_slow, added to the slow drift.
  nonrigid  the slow time course times a depth profile
            g(y) = 1 - m (1 - sin(2 pi y / wavelength + phase)) / 2 in [1 - m, 1]
            (m = nonrigid_modulation, wavelength = nonrigid_wavelength_um or the probe's span,
            phase random): neighbouring depths move together, distant ones differently.
"""

from __future__ import annotations

import numpy as np

from data_gen.config import DriftConfig
from data_gen.seeding import stream_rng
from esort_jax.recording import Drift

__all__ = ["make_drift", "slow_course", "displacement_ranges"]


def slow_course(config: DriftConfig, t_s: np.ndarray, direction: float) -> np.ndarray:
    """The slow triangle wave (µm) at times t_s, starting at 0 towards `direction` (±1)."""
    half = config.slow_amplitude_um / 2
    speed = config.slow_velocity_um_per_min / 60.0
    if half <= 0 or speed <= 0:
        return np.zeros_like(t_s, dtype=np.float64)
    period = 4 * half / speed
    return direction * (2 * half / np.pi) * np.arcsin(np.sin(2 * np.pi * t_s / period))


def _jumps(config: DriftConfig, num_samples: int, fs: float, rng: np.random.Generator):
    """(jump samples [J], level after each jump [J]) of the fast component."""
    samples, levels, t, level = [], [], 0.0, 0.0
    limit = config.fast_jump_um
    duration = num_samples / fs
    while True:
        t += config.fast_interval_s * rng.uniform(0.75, 1.25)
        size = limit * rng.uniform(0.5, 1.0)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        if abs(level + sign * size) > limit + 1e-9:
            sign = -sign
        if t >= duration:
            break
        level = level + sign * size
        samples.append(int(round(t * fs)))
        levels.append(level)
    return np.asarray(samples, np.int64), np.asarray(levels, np.float64)


def make_drift(
    config: DriftConfig,
    unit_y_um: np.ndarray,
    num_samples: int,
    fs: float,
    seed: int,
    probe_y_range_um: tuple[float, float] = (0.0, 1.0),
) -> Drift | None:
    """The drift of every unit (None for mode 'none'); stream 'drift'."""
    if config.mode == "none":
        return None
    rng = stream_rng(seed, "drift", 0)
    direction = 1.0 if rng.random() < 0.5 else -1.0
    phase = rng.uniform(0, 2 * np.pi)
    jump_samples, jump_levels = np.zeros(0, np.int64), np.zeros(0)
    if config.mode == "fast" and config.fast_jump_um > 0:
        jump_samples, jump_levels = _jumps(config, num_samples, fs, stream_rng(seed, "drift", 1))
        keep = (jump_samples > 0) & (jump_samples < num_samples)
        jump_samples, jump_levels = jump_samples[keep], jump_levels[keep]

    step = max(1, int(round(config.grid_step_s * fs)))
    grid = np.arange(0, num_samples, step, dtype=np.int64)
    grid = np.union1d(grid, [num_samples - 1])
    grid = np.union1d(grid, np.concatenate([jump_samples - 1, jump_samples]))
    t_s = grid / fs

    slow = slow_course(config, t_s, direction)
    if config.mode == "fast":
        rigid = slow if config.fast_with_slow else np.zeros_like(t_s)
        if jump_samples.size:
            after = np.searchsorted(jump_samples, grid, side="right")
            rigid = rigid + np.concatenate([[0.0], jump_levels])[after]
        return Drift(samples=grid, displacement_um=np.repeat(rigid[:, None], len(unit_y_um), axis=1))
    if config.mode == "slow":
        return Drift(samples=grid, displacement_um=np.repeat(slow[:, None], len(unit_y_um), axis=1))
    # nonrigid
    low, high = probe_y_range_um
    wavelength = config.nonrigid_wavelength_um or max(high - low, 1.0)
    y = np.asarray(unit_y_um, dtype=np.float64)
    profile = 1.0 - config.nonrigid_modulation * (1.0 - np.sin(2 * np.pi * (y - low) / wavelength + phase)) / 2
    return Drift(samples=grid, displacement_um=slow[:, None] * profile[None, :])


def displacement_ranges(drift: Drift | None, num_units: int) -> np.ndarray:
    """[N, 2] (min, max) displacement of each unit over the recording, 0 included."""
    if drift is None:
        return np.zeros((num_units, 2))
    d = drift.displacement_um
    return np.stack([np.minimum(d.min(axis=0), 0.0), np.maximum(d.max(axis=0), 0.0)], axis=1)
