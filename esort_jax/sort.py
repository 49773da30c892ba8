"""Sorting a recording with a trained network: inference streamed into post-processing.

    params = infer.fold_batchnorm(model)
    result = sort_recording(params, recording, unit_ids, threshold=1.5)
    result.sorting        # esort_jax.recording.Sorting, spike samples = true anchor samples

Probability traces are never held whole: `infer.iter_probabilities` yields chunks that
`postprocess.find_spikes` consumes as a stream. Spike times are the anchor sample of the
window that peaked (window start + anchor), not the window start.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Iterator, Sequence

import numpy as np

from esort_jax.infer import InferenceConfig, InferenceParams, iter_probabilities
from esort_jax.postprocess import PostprocessConfig, choose_threshold, find_spikes
from esort_jax.recording import Recording, Sorting

# File written next to a fine-tuned checkpoint with the threshold chosen on its training region.
SORTING_DEFAULTS = "sorting_defaults.json"

__all__ = ["SORTING_DEFAULTS", "SortResult", "sort_recording", "probability_traces", "select_threshold"]


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
    """

    sorting: Sorting
    scores: np.ndarray
    span: tuple[int, int]
    threshold: float
    inference_seconds: float
    postprocess_seconds: float
    stats: dict

    @property
    def seconds(self) -> float:
        return self.inference_seconds + self.postprocess_seconds


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
) -> SortResult:
    """Spikes of every unit in [start, stop) of `recording`.

    Windows lying inside [start, stop) are evaluated (stop - start - W + 1 positions); their
    anchors cover [start + anchor, stop - W + 1 + anchor).
    """
    stop = recording.num_samples if stop is None else int(stop)
    postprocess_config = postprocess_config or PostprocessConfig()
    if threshold is not None:
        postprocess_config = dataclasses.replace(postprocess_config, threshold=float(threshold))
    postprocess_config.validate("postprocess")
    unit_ids = np.arange(params.num_units) if unit_ids is None else np.asarray(unit_ids)
    if unit_ids.size != params.num_units:
        raise ValueError(f"{unit_ids.size} unit ids given for a network with {params.num_units} units")
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


def probability_traces(
    params: InferenceParams,
    recording: Recording,
    *,
    start: int = 0,
    stop: int | None = None,
    infer_config: InferenceConfig | None = None,
) -> tuple[np.ndarray, int]:
    """(P [N, steps], sample of column 0's anchor) for a short span (e.g. plots, thresholds)."""
    stop = recording.num_samples if stop is None else int(stop)
    pieces = [p for _, p in iter_probabilities(params, recording, infer_config, start=start, stop=stop)]
    p_NxT = np.concatenate(pieces, axis=1) if pieces else np.zeros((params.num_units, 0), np.float32)
    return p_NxT, start + params.anchor


def select_threshold(
    params: InferenceParams,
    recording: Recording,
    labels: Sorting,
    span: tuple[int, int],
    thresholds: Sequence[float],
    *,
    tolerance_ms: float = 0.4,
    metric: str = "accuracy_pooled",
    infer_config: InferenceConfig | None = None,
    postprocess_config: PostprocessConfig | None = None,
) -> tuple[float, dict]:
    """Sweep thresholds on a LABELLED TRAINING span (never the evaluation span).

    `labels` are the spikes known on that span (ground truth, or the labelling sorter's output
    over the initial stretch); `labels.unit_ids` must be the network's units in order.
    Returns (best threshold, curve dict as in postprocess.choose_threshold).
    """
    p_NxT, offset = probability_traces(params, recording, start=span[0], stop=span[1], infer_config=infer_config)
    best, curve = choose_threshold(
        p_NxT,
        offset,
        labels.in_span(*span),
        thresholds,
        tolerance_ms=tolerance_ms,
        config=postprocess_config,
        unit_ids=labels.unit_ids,
        metric=metric,
    )
    curve["span"] = [int(span[0]), int(span[1])]
    curve["metric"] = metric
    return best, curve
