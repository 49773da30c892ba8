"""Bursts with amplitude attenuation (FiringConfig.burst_*; off by default).

Hippocampal and cortical pyramidal cells often fire bursts of action potentials 2-10 ms apart
(Dobrunz, Huang & Stevens 1997, PNAS 94:14843), and the extracellular amplitude of a cell's
spikes drops systematically within such activity (Quirk & Wilson 1999, J Neurosci Methods
94:41; Harris et al. 2000, J Neurophysiol 84:401): a classic source of sorting errors, since
the later, smaller spikes of a burst look like another unit's.

A `burst_fraction` of the excitatory units are bursting (stream 'bursts'/0); each spike of such
a unit starts a burst with probability `burst_probability`, of 2..`burst_max_spikes` spikes
(uniform) at intervals uniform in `burst_isi_ms`; the k-th spike of a burst (k = 0 the first)
has its amplitude multiplied by (1 - burst_attenuation)^k. A burst spike is kept only if it
lands at least one refractory period before the unit's next spike and inside the recording,
so a unit's train never violates its refractory period. Per unit stream ('bursts', 1, unit).
"""

from __future__ import annotations

import numpy as np

from data_gen.config import FiringConfig
from data_gen.seeding import stream_rng

__all__ = ["add_bursts"]


def _unit_bursts(spikes: np.ndarray, config: FiringConfig, fs: float, dead: int, num_samples: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(extra spike samples, their amplitude factors) of one bursting unit's train."""
    starts = rng.random(spikes.size) < config.burst_probability
    lengths = rng.integers(2, config.burst_max_spikes + 1, size=spikes.size)
    isi = rng.uniform(*config.burst_isi_ms, size=(spikes.size, config.burst_max_spikes - 1)) * fs / 1e3
    following = np.append(spikes[1:], num_samples + dead)  # each spike's successor (or the end)
    extra, factor = [], []
    for i in np.flatnonzero(starts):
        times = spikes[i] + np.floor(np.cumsum(isi[i, : lengths[i] - 1])).astype(np.int64)
        ok = times <= min(following[i] - dead, num_samples - 1)
        ok &= np.cumprod(ok).astype(bool)  # a burst stops at its first spike that does not fit
        extra.append(times[ok])
        factor.append((1.0 - config.burst_attenuation) ** np.arange(1, ok.sum() + 1))
    if not extra:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(extra), np.concatenate(factor)


def add_bursts(samples: np.ndarray, unit_indices: np.ndarray, cell_type: np.ndarray, config: FiringConfig,
               fs: float, dead_samples: int, num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(samples, unit_indices, amplitude factor) with the bursts added, sorted by (sample, unit);
    the factor is 1 for every spike that is not a burst's second or later spike."""
    factor = np.ones(samples.size)
    if config.burst_fraction <= 0:
        return samples, unit_indices, factor
    bursting = (stream_rng(seed, "bursts", 0).random(len(cell_type)) < config.burst_fraction)
    bursting &= np.asarray(cell_type) == "exc"
    add_samples, add_units, add_factor = [samples], [unit_indices], [factor]
    for unit in np.flatnonzero(bursting):
        extra, scale = _unit_bursts(samples[unit_indices == unit], config, fs, dead_samples, num_samples,
                                    stream_rng(seed, "bursts", 1, int(unit)))
        add_samples.append(extra)
        add_units.append(np.full(extra.size, unit, np.int64))
        add_factor.append(scale)
    samples, units, factor = (np.concatenate(a) for a in (add_samples, add_units, add_factor))
    order = np.lexsort((units, samples))
    return samples[order], units[order], factor[order]
