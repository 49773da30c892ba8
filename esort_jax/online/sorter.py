"""The push-based online sorter: blocks of samples in, final spikes out, equal to the offline sort.

    sorter = OnlineSorter.from_checkpoint("runs/ft/checkpoint")   # threshold saved with it
    sorter.warm_up()                                              # compile + check, before data
    for block in stream:                                          # [n, C], any n >= 1
        spikes = sorter.push(block)                               # the spikes final with it
    spikes = sorter.flush()                                       # the rest: end of the stream

The concatenated spikes of any sequence of block sizes equal `sort.sort_recording` on the same
samples with the same threshold (same samples, units and scores; tested bit for bit, and the
block shapes' exactness is checked at warm-up, see esort_jax.online.compute).

Latency. A spike at sample s (window anchor) is final once samples up to
    s + (W - 1 - anchor) + h + 1                      (`final_after` samples after s)
have arrived (W window, h smoothing half-width: 30 + 8 + 1 = 39 samples, 1.2 ms at 32 kHz,
for the paper's network): the network needs the window of s + h + 1 (the smoothed value after
the peak), its last sample is that far ahead. Later only when the rule needs more:
  - a plateau (equal smoothed values, e.g. probabilities saturated at 1.0) of L samples starting
    at s: until its end is seen, L - 1 samples later;
  - min_distance_samples d > 1: until sample s + d - 1's smoothed value is known (d - 1 - 1
    more samples) and no still-open higher plateau within d - 1 samples can take over.
Nothing is emitted that a later sample could retract, and nothing is held beyond that.

State carried between pushes (bounded, independent of the stream's length): the last W - 1
input samples, the probabilities of the last 2h window positions (on the device), the current
run of equal smoothed values per unit, peaks within the minimum distance, the causal filter.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from esort_jax.online import _shared
from esort_jax.online.causal import CausalPreprocessConfig, CausalPreprocessor, resolve_preprocess
from esort_jax.online.compute import BlockCompute, OnlineConfig
from esort_jax.online.peaks import StreamingPeaks

__all__ = ["OnlineSorter", "SpikeBatch", "NonFiniteBlockError"]


class NonFiniteBlockError(ValueError):
    """A pushed block holds NaN or inf (it was not consumed; the sorter's state is unchanged)."""


@dataclasses.dataclass(frozen=True, eq=False)
class SpikeBatch:
    """Spikes, sorted by (sample, unit): absolute samples, indices into `unit_ids`, scores
    (smoothed probability at the peak)."""

    samples: np.ndarray
    unit_indices: np.ndarray
    scores: np.ndarray
    unit_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.samples.size)

    @property
    def ids(self) -> np.ndarray:
        """The unit id of each spike."""
        return self.unit_ids[self.unit_indices]

    @staticmethod
    def concatenate(batches: Sequence["SpikeBatch"], unit_ids) -> "SpikeBatch":
        """All spikes of `batches` in one batch, sorted by (sample, unit)."""
        parts = [b for b in batches if len(b)]
        if not parts:
            return SpikeBatch(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                              np.asarray(unit_ids))
        samples = np.concatenate([b.samples for b in parts])
        units = np.concatenate([b.unit_indices for b in parts])
        scores = np.concatenate([b.scores for b in parts])
        order = np.lexsort((units, samples))
        return SpikeBatch(samples[order], units[order], scores[order], np.asarray(unit_ids))


class OnlineSorter:
    """Push-based sorting with a trained network (see the module doc).

    Args:
      params: the folded network (`infer.fold_batchnorm`).
      unit_ids: [N] ids of the network's outputs (default 0..N-1).
      threshold: smoothed-value threshold (default: postprocess's).
      sampling_frequency: Hz (for reports and the causal filter).
      postprocess, infer: the configs the equivalent offline sort uses.
      config: the compiled block shapes (OnlineConfig).
      preprocess: causal preprocessing applied to every block (None: none).
      gain_to_uv, offset_to_uv: integer input (e.g. int16 from an ADC) is converted as
        raw · gain + offset (as `ArrayTraces` reads it); float input is taken as µV.
      start_sample: absolute sample of the first pushed sample.
      channel_positions, channel_ids: [C, 2] µm and [C] ids of the channels the network was
        trained on, in its input order (None: unknown); the service checks a described
        stream against them (online.channel_map).
    """

    def __init__(self, params, unit_ids=None, *, threshold: float | None = None, sampling_frequency: float,
                 postprocess=None, infer=None, config: OnlineConfig | None = None,
                 preprocess: CausalPreprocessConfig | None = None, gain_to_uv=1.0, offset_to_uv=0.0,
                 start_sample: int = 0, channel_positions=None, channel_ids=None):
        postprocess = postprocess or _shared.PostprocessConfig()
        if threshold is not None:
            postprocess = dataclasses.replace(postprocess, threshold=float(threshold))
        postprocess.validate("postprocess")
        params.check()
        self.params = params
        self.unit_ids = np.arange(params.num_units) if unit_ids is None else np.asarray(unit_ids)
        if self.unit_ids.shape != (params.num_units,):
            raise ValueError(f"{self.unit_ids.size} unit ids given for a network with {params.num_units} units")
        self.sampling_frequency = float(sampling_frequency)
        self.postprocess = postprocess
        self.threshold = float(postprocess.effective_threshold)
        self.compute = BlockCompute(params, infer or _shared.InferenceConfig(), postprocess, config or OnlineConfig())
        self.preprocess = preprocess
        self._filter = CausalPreprocessor(preprocess, sampling_frequency, params.num_channels) if preprocess else None
        self.channel_positions = None if channel_positions is None else np.asarray(channel_positions, float)
        self.channel_ids = None if channel_ids is None else np.asarray(channel_ids)
        for name, value, shape in (("channel_positions", self.channel_positions, (params.num_channels, 2)),
                                   ("channel_ids", self.channel_ids, (params.num_channels,))):
            if value is not None and value.shape != shape:
                raise ValueError(f"{name} has shape {value.shape}; the network takes {shape}")
        self.gain_to_uv = np.asarray(gain_to_uv, np.float32)
        self.offset_to_uv = np.asarray(offset_to_uv, np.float32)
        self._peaks = StreamingPeaks(params.num_units, self.threshold, postprocess.min_distance_samples)
        self.reset(start_sample)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, threshold: float | None = None, preprocess="checkpoint",
                        **kwargs) -> "OnlineSorter":
        """A sorter for a saved network: unit ids, sampling rate and (unless given) the threshold
        saved with it (sorting_defaults.json); `preprocess` as in causal.resolve_preprocess
        ('checkpoint', 'none' or a CausalPreprocessConfig that must match the recorded one)."""
        loaded = _shared.load_checkpoint(path)
        meta = loaded.metadata
        fs = kwargs.pop("sampling_frequency", None) or meta.sampling_frequency
        if fs is None:
            raise ValueError(f"{path}: the checkpoint records no sampling rate; pass sampling_frequency=")
        return cls(loaded.params, meta.unit_ids, threshold=loaded.threshold if threshold is None else threshold,
                   sampling_frequency=fs, preprocess=resolve_preprocess(meta.extra, preprocess),
                   **{"channel_positions": meta.channel_positions, "channel_ids": meta.channel_ids, **kwargs})

    # -- properties -------------------------------------------------------------------------

    @property
    def num_channels(self) -> int:
        return self.params.num_channels

    @property
    def final_after(self) -> int:
        """Samples after a spike's sample that must have arrived before it can be final."""
        return self.params.window - 1 - self.params.anchor + self.postprocess.half_width + 1

    @property
    def samples_seen(self) -> int:
        """Samples pushed since the stream (re)started."""
        return self._samples_seen

    # -- the stream -------------------------------------------------------------------------

    def warm_up(self, seed: int = 0) -> dict:
        """Compile every block shape and check it against the offline path (before the first
        block; see BlockCompute.warm_up). Leaves the stream state untouched."""
        return self.compute.warm_up(seed)

    def reset(self, start_sample: int = 0) -> None:
        """Forget the stream (history, filter state, open runs): the next sample pushed is
        `start_sample`, the first of a new recording. Pending spikes are discarded (see flush)."""
        self.stream_start = int(start_sample)
        self._samples_seen = 0
        self._steps_done = 0  # window positions computed
        self._held = np.zeros((0, self.num_channels), np.float32)  # input rows not yet a window start
        self._tail = self.compute.zero_tail()
        self._peaks.reset()
        if self._filter is not None:
            self._filter.reset()

    def to_microvolts(self, samples) -> np.ndarray:
        """A block as float32 µV [n, C]: float samples are µV already; integer samples (e.g.
        int16 from an ADC) become raw · gain + offset, as `ArrayTraces` reads them."""
        x = np.asarray(samples)
        if x.ndim != 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"expected a block [n, {self.num_channels}] (samples, channels); got shape {x.shape}")
        if np.issubdtype(x.dtype, np.floating):
            return x.astype(np.float32, copy=False)
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"expected int or float samples; got dtype {x.dtype}")
        return (x.astype(np.float32) * self.gain_to_uv + self.offset_to_uv).astype(np.float32)

    def push(self, samples) -> SpikeBatch:
        """Take the next block [n, C] (float32 µV, or int16 etc. converted with the gain) and
        return the spikes that became final with it. A block with NaN/inf raises
        NonFiniteBlockError and is not consumed."""
        x = self.to_microvolts(samples)
        if not np.isfinite(x).all():
            row, channel = np.argwhere(~np.isfinite(x))[0]
            raise NonFiniteBlockError(f"block value {x[row, channel]} at row {row}, channel {channel} is not finite")
        if self._filter is not None:
            x = self._filter(x)
        self._samples_seen += x.shape[0]
        rows = np.concatenate([self._held, x]) if self._held.shape[0] else x
        steps = rows.shape[0] - self.params.window + 1
        if steps <= 0:
            self._held = np.array(rows, np.float32)
            return self._batch(*_no_peaks())
        found = self._advance(rows, steps)
        self._held = np.array(rows[steps:], np.float32)
        return self._batch(*found)

    def flush(self) -> SpikeBatch:
        """End the stream: the remaining spikes, decided as if the recording ended after the last
        sample pushed (as the offline sort of these samples decides them). The sorter then
        continues with a new stream starting at the next sample."""
        total = self._steps_done
        h = self.compute.half_width
        parts = []
        if total > 0 and h > 0:
            sm = self.compute.end(self._tail)  # positions total - h ... total - 1
            first = max(self._peaks.next_index, 0)
            parts.append(self._peaks.push(sm[:, first - (total - h):]))
        parts.append(self._peaks.finish())
        batch = self._batch(*(np.concatenate(column) for column in zip(*parts)))
        self.reset(self.stream_start + self._samples_seen)
        return batch

    def _advance(self, rows: np.ndarray, steps: int):
        """Run the network over `steps` new window positions (rows hold them plus W - 1) and
        feed the smoothed values that became final to the peak picker."""
        w, h = self.params.window, self.compute.half_width
        found, offset, pending = [], 0, None
        for size, valid in self.compute.plan(steps):
            block = rows[offset:offset + valid + w - 1]
            if size != valid:
                block = np.concatenate([block, np.zeros((size - valid, block.shape[1]), np.float32)])
            sm, self._tail = self.compute.run(block, valid, self._tail)  # dispatched, not waited for
            if pending is not None:
                found.append(self._smoothed(*pending))
            pending = (sm, valid, self._steps_done + offset - h)
            offset += valid
        found.append(self._smoothed(*pending))
        self._steps_done += steps
        return tuple(np.concatenate(column) for column in zip(*found))

    def _smoothed(self, sm, valid: int, first_index: int):
        """Feed the valid smoothed values of one block (positions from first_index) to the peaks."""
        sm = np.asarray(sm)[:, :valid]
        skip = max(self._peaks.next_index - first_index, 0)  # positions < 0 at the stream's start
        return self._peaks.push(sm[:, skip:])

    def _batch(self, index, unit, height) -> SpikeBatch:
        samples = self.stream_start + self.params.anchor + np.asarray(index, np.int64)
        return SpikeBatch(samples, np.asarray(unit, np.int64), np.asarray(height, np.float32), self.unit_ids)


def _no_peaks():
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
