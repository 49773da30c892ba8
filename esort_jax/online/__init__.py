"""Online sorting: the trained network and post-processing pushed one block at a time.

  sorter.py    OnlineSorter: push(block) -> spikes final with it, flush(); equal to sort_recording
  compute.py   OnlineConfig and the device work: a ladder of block shapes compiled at warm-up
  peaks.py     StreamingPeaks: postprocess's peak rule on a stream of smoothed values
  causal.py    causal preprocessing (streaming band-pass + common reference), recorded in checkpoints
  protocol.py  the ZeroMQ wire format (blocks in, spikes and events out)
  service.py   SortingService: the long-running socket loop and its fault handling
  spike_log.py the spikes published so far, on disk, and the sorting folder written at shutdown
  replay.py    a publisher that streams any recording at real-time pace
  _shared.py   the offline-core internals the online path uses (one place to repoint)
"""

from esort_jax.online.causal import CausalPreprocessConfig, CausalPreprocessor, causal_preprocess, checkpoint_extra
from esort_jax.online.compute import OnlineConfig
from esort_jax.online.peaks import StreamingPeaks
from esort_jax.online.sorter import NonFiniteBlockError, OnlineSorter, SpikeBatch

__all__ = [
    "CausalPreprocessConfig", "CausalPreprocessor", "NonFiniteBlockError", "OnlineConfig", "OnlineSorter",
    "SpikeBatch", "StreamingPeaks", "causal_preprocess", "checkpoint_extra",
]
