"""Per-unit SNR and accuracy binned by it, as SpikeForest reports sorters.

    snr = unit_snr(recording, truth)                          # [N], truth.unit_ids order
    summary = snr_summary(evaluation.per_unit(), snr, truth.unit_ids)

SNR of a ground-truth unit (SpikeForest, Magland et al. 2020, eLife 9:e55167): the peak absolute
amplitude of its mean waveform, on the channel where that is largest, over that channel's noise
standard deviation, estimated robustly as MAD / 0.6745 of the traces (spikes barely move a
median). Computed here on the traces every method was given, from up to `max_spikes` spikes per
unit drawn at random (seeded) and noise from up to `noise_seconds` of evenly spaced chunks.

SpikeForest's summary of a sorter on a study: the mean accuracy over the units with SNR above an
adjustable cut (8 on its website), and the number of units with accuracy at least 0.8. We report
both, beside a table of SNR bins (`SNR_BINS`), so that pooled and per-unit accuracy can be read
against how hard the units are.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from esort_jax.recording import Recording, Sorting

__all__ = ["SNR_CUT", "SNR_BINS", "WELL_DETECTED", "unit_snr", "snr_summary", "mean_snippets"]

SNR_CUT = 8.0  # SpikeForest's default cut
SNR_BINS = (0.0, 5.0, 8.0, 15.0, float("inf"))
WELL_DETECTED = 0.8


def _noise_std(recording: Recording, noise_seconds: float, chunk: int) -> np.ndarray:
    """[C] MAD / 0.6745 per channel over evenly spaced chunks of the recording."""
    total = int(min(noise_seconds * recording.sampling_frequency, recording.num_samples))
    count = max(1, total // chunk)
    starts = np.linspace(0, max(recording.num_samples - chunk, 0), count).astype(np.int64)
    traces = np.concatenate([recording.read(int(s), int(min(s + chunk, recording.num_samples))) for s in starts])
    return np.median(np.abs(traces - np.median(traces, axis=0)), axis=0) / 0.6745


def unit_snr(recording: Recording, truth: Sorting, *, max_spikes: int = 300, ms_before: float = 1.0,
             ms_after: float = 2.0, noise_seconds: float = 10.0, seed: int = 0,
             with_channels: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """[N] SNR of every unit of `truth` on `recording` (module doc); NaN for a unit without a
    spike whose waveform fits in the recording. `with_channels`: also the [N] channel index the
    SNR was taken on (the unit's largest peak over noise; -1 for such a unit), e.g. to place units
    at `recording.channel_positions`."""
    fs = recording.sampling_frequency
    before, after = int(round(ms_before * fs / 1000)), int(round(ms_after * fs / 1000))
    noise = np.maximum(_noise_std(recording, noise_seconds, chunk=int(fs)), 1e-12)
    rng = np.random.default_rng(seed)
    snr = np.full(truth.num_units, np.nan)
    channels = np.full(truth.num_units, -1, dtype=np.int64)
    chosen = {}
    for u in range(truth.num_units):
        spikes = truth.unit_samples(u)
        spikes = spikes[(spikes >= before) & (spikes + after <= recording.num_samples)]
        if spikes.size:
            chosen[u] = np.sort(rng.choice(spikes, size=min(max_spikes, spikes.size), replace=False))
    means = mean_snippets(recording, chosen, before, after, chunk=int(fs))
    for u, mean in means.items():
        per_channel = np.max(np.abs(mean), axis=0) / noise
        snr[u], channels[u] = float(np.max(per_channel)), int(np.argmax(per_channel))
    return (snr, channels) if with_channels else snr


def mean_snippets(recording: Recording, spikes: dict, before: int, after: int, chunk: int) -> dict:
    """{unit: [before + after, C] mean of the snippets [s - before, s + after) at its spikes},
    read a chunk of about `chunk` samples at a time (one read per snippet costs a filter pass
    each on a lazily preprocessed recording: minutes at 384 channels)."""
    if not spikes:
        return {}
    samples = np.concatenate(list(spikes.values()))
    units = np.concatenate([np.full(v.size, u) for u, v in spikes.items()])
    order = np.argsort(samples, kind="stable")
    samples, units = samples[order], units[order]
    sums = {u: np.zeros((before + after, recording.num_channels), dtype=np.float64) for u in spikes}
    i = 0
    while i < samples.size:
        j = int(np.searchsorted(samples, samples[i] + chunk, side="left"))
        start, stop = int(samples[i]) - before, int(samples[j - 1]) + after
        block = recording.read(start, stop)
        for s, u in zip(samples[i:j].tolist(), units[i:j].tolist()):
            sums[u] += block[s - before - start: s + after - start]
        i = j
    return {u: (sums[u] / spikes[u].size).astype(np.float32) for u in spikes}


def _bin_row(accuracy: np.ndarray, lo: float, hi: float, snr: np.ndarray) -> dict:
    inside = (snr >= lo) & (snr < hi) & np.isfinite(accuracy)
    values = accuracy[inside]
    return {"snr_min": lo, "snr_max": None if np.isinf(hi) else hi, "n_units": int(values.size),
            "accuracy_mean": float(values.mean()) if values.size else None,
            "well_detected": int(np.count_nonzero(values >= WELL_DETECTED))}


def snr_summary(per_unit: dict, snr: np.ndarray, snr_unit_ids: Sequence, *, cut: float = SNR_CUT,
                bins: Sequence[float] = SNR_BINS) -> dict:
    """SpikeForest's numbers from an evaluation's `per_unit` table (EvaluationResult.per_unit()):
    `accuracy_mean_snr_above` (units with SNR >= cut; NaN accuracy, a unit silent in the span,
    left out), `n_units_snr_above`, `well_detected_snr_above`, and per SNR bin the units, their
    mean accuracy and the well-detected count. `snr` is in the order of `snr_unit_ids`."""
    by_id = {str(u): float(v) for u, v in zip(np.asarray(snr_unit_ids).tolist(), np.asarray(snr).tolist())}
    ids = [str(u) for u in per_unit["unit_ids"]]
    snr_rows = np.asarray([by_id.get(u, np.nan) for u in ids], dtype=np.float64)
    accuracy = np.asarray([np.nan if a is None else a for a in per_unit["accuracy"]], dtype=np.float64)
    above = _bin_row(accuracy, cut, float("inf"), snr_rows)
    return {"snr_cut": float(cut), "accuracy_mean_snr_above": above["accuracy_mean"],
            "n_units_snr_above": above["n_units"], "well_detected_snr_above": above["well_detected"],
            "snr_bins": [_bin_row(accuracy, lo, hi, snr_rows) for lo, hi in zip(bins[:-1], bins[1:])]}
