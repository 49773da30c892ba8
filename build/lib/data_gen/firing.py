"""Spike trains: Poisson processes with an absolute refractory period (dead time).

Rates: lognormal across units (cortical firing rates are lognormal, Buzsáki & Mizuseki 2014)
with mean `exc_rate_hz` / `inh_rate_hz` (MEArec's defaults, 5 and 15 Hz) and coefficient of
variation `rate_cv` (0.3: wider than MEArec's ±20 % normal, narrower than in vivo, so every
unit fires enough for K-spikes-per-unit training), clipped to [min_rate_hz, max_rate_hz].

Trains: inter-spike intervals are t_ref + Exponential(mean 1/rate - t_ref), in samples with
t_ref rounded up to whole samples; spike samples are the floors of the cumulative sums, so
consecutive samples differ by >= t_ref samples (zero violations) and the mean rate is the
drawn rate (the dead time is subtracted from the exponential's mean, not added to it). The
first spike falls at a uniform phase of the first interval (a stationary start). Each unit
draws from its own stream ('firing', unit), sequentially: a longer recording keeps the same
spikes in the common prefix.
"""

from __future__ import annotations

import math

import numpy as np

from data_gen.config import FiringConfig
from data_gen.seeding import stream_rng

__all__ = ["draw_rates", "refractory_samples", "spike_train", "spike_trains", "expected_count_and_sd"]


def draw_rates(config: FiringConfig, cell_type: np.ndarray, seed: int) -> np.ndarray:
    """[N] mean firing rate (Hz) per unit (stream 'firing'/0: one normal draw per unit)."""
    z = stream_rng(seed, "firing", 0).standard_normal(len(cell_type))
    mean = np.where(np.asarray(cell_type) == "inh", config.inh_rate_hz, config.exc_rate_hz)
    sigma2 = math.log1p(config.rate_cv**2)
    rates = mean * np.exp(np.sqrt(sigma2) * z - sigma2 / 2)  # lognormal with the given mean and CV
    return np.clip(rates, config.min_rate_hz, config.max_rate_hz)


def refractory_samples(refractory_ms: float, fs: float) -> int:
    """The dead time in whole samples (rounded up, at least 1)."""
    return max(1, int(math.ceil(refractory_ms * 1e-3 * fs - 1e-9)))


def spike_train(rate_hz: float, num_samples: int, fs: float, dead_samples: int, rng: np.random.Generator) -> np.ndarray:
    """int64 sorted spike samples in [0, num_samples) of one renewal train (see module doc)."""
    mean_isi = fs / rate_hz
    if mean_isi <= dead_samples:
        raise ValueError(f"rate {rate_hz} Hz is not below 1 / dead time ({fs / dead_samples:g} Hz)")
    free = mean_isi - dead_samples
    phase = rng.random()
    chunks, total, end = [], 0.0, None
    expected = num_samples / mean_isi
    batch = int(expected + 6 * math.sqrt(expected) + 16)
    while end is None or end < num_samples:
        isi = dead_samples + rng.exponential(free, size=batch)
        if not chunks:
            isi[0] *= phase  # first spike at a uniform phase of its interval (may be < t_ref: no predecessor)
        times = total + np.cumsum(isi)
        total, end = float(times[-1]), float(times[-1])
        chunks.append(times)
        batch = max(16, batch // 4)
    times = np.concatenate(chunks)
    samples = np.floor(times[times < num_samples]).astype(np.int64)
    return samples


def spike_trains(
    rates_hz: np.ndarray, num_samples: int, fs: float, refractory_ms: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(samples [S], unit_indices [S]) of all units, sorted by (sample, unit)."""
    dead = refractory_samples(refractory_ms, fs)
    trains = [
        spike_train(float(rate), num_samples, fs, dead, stream_rng(seed, "firing", 1, i))
        for i, rate in enumerate(rates_hz)
    ]
    samples = np.concatenate(trains) if trains else np.zeros(0, np.int64)
    units = np.concatenate([np.full(t.size, i, np.int64) for i, t in enumerate(trains)]) if trains else np.zeros(0, np.int64)
    order = np.lexsort((units, samples))
    return samples[order], units[order]


def expected_count_and_sd(rate_hz: float, duration_s: float, refractory_s: float) -> tuple[float, float]:
    """Mean and (asymptotic) standard deviation of a dead-time Poisson count over `duration_s`.

    Renewal theory: count variance ~ T r CV², with the intervals' CV = 1 - r t_ref.
    """
    mean = rate_hz * duration_s
    return mean, math.sqrt(mean) * (1.0 - rate_hz * refractory_s)
