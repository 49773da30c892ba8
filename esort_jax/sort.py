"""Stage 5 of the pipeline: sorting a span with a trained network, inference streamed into
post-processing.

    params = infer.fold_batchnorm(model)
    result = sort_recording(params, recording, unit_ids, threshold=1.5)
    result.sorting        # esort_jax.recording.Sorting, spike samples = true anchor samples
    sort_recording(..., split=train_end)   # the same spikes, the two sides timed separately

Probability traces are never held whole: `infer.iter_probabilities` yields chunks that
`postprocess.find_spikes` consumes as a stream. Spike times are the anchor sample of the
window that peaked (window start + anchor), not the window start.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from esort_jax.config import ConfigError
from esort_jax.infer import InferenceConfig, InferenceParams, iter_probabilities
from esort_jax.postprocess import PostprocessConfig, find_spikes
from esort_jax.recording import Recording, Sorting

if TYPE_CHECKING:
    from esort_jax.checkpoint import CheckpointMetadata

# File written next to a fine-tuned checkpoint with the threshold chosen on its training region.
SORTING_DEFAULTS = "sorting_defaults.json"

__all__ = ["SORTING_DEFAULTS", "SortResult", "check_fine_tuned", "check_recording_fits", "saved_threshold", "sort_recording"]


@dataclasses.dataclass(frozen=True, eq=False)
class SortResult:
    """Spikes found in [start, stop) and where the time went.

    Attributes:
      sorting: the spikes (absolute samples, unit ids as given).
      scores: [S] smoothed probability at each spike (its peak height).
      span: the samples [start, stop) that were sorted.
      threshold: the threshold used.
      inference_seconds: wall time spent producing probability traces (reading included).
      postprocess_seconds: wall time spent in peak picking.
      stats: post-processing counters (chunks, re-runs, ...).
      parts: with a `split`, the two calls (before, rest) the spikes were taken from.
    """

    sorting: Sorting
    scores: np.ndarray
    span: tuple[int, int]
    threshold: float
    inference_seconds: float
    postprocess_seconds: float
    stats: dict
    parts: tuple = ()

    @property
    def seconds(self) -> float:
        return self.inference_seconds + self.postprocess_seconds

    def summary(self) -> dict:
        """results.json entry: threshold, spikes and units found, the duration sorted and where
        the time went (realtime_factor: seconds of data per second of sorting)."""
        duration = (self.span[1] - self.span[0]) / self.sorting.sampling_frequency
        return {
            "threshold": self.threshold,
            "num_spikes": self.sorting.num_spikes,
            "num_units": int(self.sorting.num_units),
            "duration_s": duration,
            "sort_seconds": self.seconds,
            "inference_seconds": self.inference_seconds,
            "postprocess_seconds": self.postprocess_seconds,
            "realtime_factor": duration / self.seconds if self.seconds else None,
        }


class _TimedChunks:
    """Iterate probability chunks while timing the producer (inference) separately."""

    def __init__(self, chunks: Iterator[tuple[int, np.ndarray]]):
        self._chunks = chunks
        self.seconds = 0.0

    def __iter__(self):
        while True:
            started = time.perf_counter()
            try:
                _, p_NxS = next(self._chunks)
            except StopIteration:
                self.seconds += time.perf_counter() - started
                return
            self.seconds += time.perf_counter() - started
            yield p_NxS


def sort_recording(
    params: InferenceParams,
    recording: Recording,
    unit_ids: Sequence | np.ndarray | None = None,
    *,
    threshold: float | None = None,
    infer_config: InferenceConfig | None = None,
    postprocess_config: PostprocessConfig | None = None,
    start: int = 0,
    stop: int | None = None,
    split: int | None = None,
) -> SortResult:
    """Spikes of every unit in [start, stop) of `recording`.

    Windows lying inside [start, stop) are evaluated (stop - start - W + 1 positions); their
    anchors cover `evaluate.scored_span((start, stop))` = [start + anchor, stop - W + 1 + anchor).
    With `split` (start < split < stop), [start, split) and [split, stop) are sorted by two calls
    whose spikes together are those of one pass (`result.parts` holds both, e.g. to time the
    rest of a recording after a training span on its own).
    """
    stop = recording.num_samples if stop is None else int(stop)
    postprocess_config = postprocess_config or PostprocessConfig()
    if threshold is not None:
        postprocess_config = dataclasses.replace(postprocess_config, threshold=float(threshold))
    postprocess_config.validate("postprocess")
    unit_ids = np.arange(params.num_units) if unit_ids is None else np.asarray(unit_ids)
    if unit_ids.size != params.num_units:
        raise ValueError(f"{unit_ids.size} unit ids given for a network with {params.num_units} units")
    if split is not None:
        return _sort_split(params, recording, unit_ids, int(split), infer_config, postprocess_config, start, stop)
    return _sort_once(params, recording, unit_ids, infer_config, postprocess_config, start, stop)


def _sort_once(params, recording, unit_ids, infer_config, postprocess_config, start, stop) -> SortResult:
    chunks = _TimedChunks(iter_probabilities(params, recording, infer_config, start=start, stop=stop))
    stats: dict = {}
    started = time.perf_counter()
    sorting, scores = find_spikes(
        chunks,
        sampling_frequency=recording.sampling_frequency,
        unit_ids=unit_ids,
        sample_offset=start + params.anchor,
        config=postprocess_config,
        return_scores=True,
        stats=stats,
    )
    total = time.perf_counter() - started
    return SortResult(
        sorting=sorting,
        scores=scores,
        span=(int(start), int(stop)),
        threshold=float(postprocess_config.effective_threshold),
        inference_seconds=chunks.seconds,
        postprocess_seconds=max(total - chunks.seconds, 0.0),
        stats=stats,
    )


def _sort_split(params, recording, unit_ids, split, infer_config, postprocess_config, start, stop) -> SortResult:
    """[start, split) and [split, stop) in two calls. Each reads `margin` samples past the split
    (smoothing half-width, neighbour, min-distance reach) so the peaks near it see the same
    context as in one pass; spikes are taken from the call whose side of the split their
    anchor is on."""
    window, anchor = params.window, params.anchor
    if not start + window <= split <= stop - window:
        raise ValueError(f"split {split} must leave a window ({window} samples) on each side of the sorted "
                         f"span [{start}, {stop})")
    margin = postprocess_config.half_width + max(postprocess_config.min_distance_samples - 1, 0) + 2
    common = (params, recording, unit_ids, infer_config, postprocess_config)
    before = _sort_once(*common, start, min(split + window - 1 + margin, stop))
    rest = _sort_once(*common, max(split - margin, start), stop)
    cut = split + anchor
    keep_before, keep_rest = before.sorting.samples < cut, rest.sorting.samples >= cut
    samples = np.concatenate([before.sorting.samples[keep_before], rest.sorting.samples[keep_rest]])
    units = np.concatenate([before.sorting.unit_indices[keep_before], rest.sorting.unit_indices[keep_rest]])
    scores = np.concatenate([before.scores[keep_before], rest.scores[keep_rest]])
    order = np.lexsort((units, samples))
    merged = Sorting(samples[order], units[order], np.asarray(unit_ids), recording.sampling_frequency)
    return SortResult(
        sorting=merged, scores=scores[order], span=(int(start), int(stop)), threshold=rest.threshold,
        inference_seconds=before.inference_seconds + rest.inference_seconds,
        postprocess_seconds=before.postprocess_seconds + rest.postprocess_seconds,
        stats={"before": before.stats, "rest": rest.stats}, parts=(before, rest),
    )


def saved_threshold(checkpoint: str | Path) -> float | None:
    """The threshold chosen on the training region and saved next to a fine-tuned network
    (`SORTING_DEFAULTS` in the checkpoint folder); None when there is none."""
    path = Path(checkpoint) / SORTING_DEFAULTS
    return json.loads(path.read_text())["threshold"] if path.is_file() else None


# Checkpoints whose output units belong to the recording they were pretrained on (metadata
# extra.role), never to a recording one sorts: a network to fine-tune, not to sort with.
PRETRAINED_ROLES = {"pretrain": "a pretraining checkpoint", "backbone": "a pretrained backbone"}


def check_fine_tuned(meta: CheckpointMetadata, where: str = "checkpoint") -> None:
    """ConfigError when `meta` describes a network pretrained on another recording (extra.role
    'pretrain' or 'backbone'): its units are that recording's, so sorting with it would report
    spikes of units the sorted recording does not have (and score them by id against its truth)
    as if all were well."""
    role = (meta.extra or {}).get("role")
    if role in PRETRAINED_ROLES:
        raise ConfigError(
            f"{where} is {PRETRAINED_ROLES[role]} (metadata.json extra.role={role!r}): its {meta.num_units} "
            "output units are those of the recording it was pretrained on, not of a recording to sort; "
            "fine-tune it on this recording's labels first (finetune.py or sort_real.py checkpoint=...) and "
            "sort with that run's checkpoint"
        )


def check_recording_fits(meta: CheckpointMetadata, recording: Recording, where: str = "checkpoint") -> None:
    """ConfigError unless `recording` can be sorted by the network `meta` describes: the same
    channel count and sampling rate, and at least one window of samples. `where` names the
    checkpoint in the messages (e.g. 'checkpoint: runs/ft/checkpoint')."""
    if recording.num_channels != meta.num_channels:
        raise ConfigError(
            f"{where} was trained on {meta.num_channels} channels but the recording "
            f"has {recording.num_channels}"
        )
    fs = meta.sampling_frequency
    if fs is not None and abs(fs - recording.sampling_frequency) > 1e-6 * fs:
        raise ConfigError(
            f"{where} was trained at {fs:g} Hz but the recording is sampled at "
            f"{recording.sampling_frequency:g} Hz"
        )
    if recording.num_samples < meta.model_config.window:
        raise ConfigError(
            f"recording: {recording.num_samples} samples is shorter than one window "
            f"({meta.model_config.window} samples)"
        )
