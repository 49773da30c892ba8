"""Causal preprocessing for raw acquisition streams: a streaming band-pass and common reference,
applied block by block with its state carried, identical to one pass over the whole recording.

Differs from the offline preprocessing (esort_jax.realdata.preprocess: SpikeInterface's
zero-phase `filtfilt` band-pass): a causal filter only sees the past, so it delays and distorts
waveforms (group delay of a few samples, phase depending on frequency). A network must therefore
be trained on data filtered the same causal way:

    train_rec = causal_preprocess(raw_recording, CausalPreprocessConfig())  # one sequential pass
    fit(train_rec, labels, config, seed=0, metadata_extra=checkpoint_extra(train_rec))

`checkpoint_extra` records the settings in the checkpoint (metadata extra['causal_preprocess']);
the online sorter applies them to the raw stream, and `resolve_preprocess` refuses a network
trained otherwise (e.g. with zero-phase filtering) rather than sorting silently wrong.

Filter: Butterworth band-pass (second-order sections, float64 state per channel). Its state
starts at the steady state of the first sample ('steady': no start-up transient from a DC
offset) or at zero. Common reference: the median (or mean) across channels of each sample,
subtracted (after the band-pass, as SpikeInterface orders it). Output float32 µV.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from esort_jax.config import from_dict, require, to_dict
from esort_jax.recording import ArrayTraces, Recording

__all__ = [
    "CausalPreprocessConfig", "CausalPreprocessor", "PreprocessMismatchError", "causal_preprocess",
    "checkpoint_extra", "resolve_preprocess", "EXTRA_KEY",
]

EXTRA_KEY = "causal_preprocess"  # checkpoint metadata extra[...] and Recording.metadata[...]


class PreprocessMismatchError(ValueError):
    """The stream would be preprocessed differently from the network's training data."""


@dataclasses.dataclass(frozen=True)
class CausalPreprocessConfig:
    """Causal preprocessing of a raw stream.

    Attributes:
      bandpass: apply the causal Butterworth band-pass.
      freq_min_hz, freq_max_hz: its pass band (freq_max_hz below the Nyquist frequency).
      order: Butterworth order of each edge (scipy.signal.butter(order, band): 2·order poles).
      initial_state: 'steady' (state of a constant input equal to the first sample) or 'zero'.
      common_reference: 'global' (subtract the across-channel median/mean of each sample) or 'none'.
      reference_operator: 'median' or 'average'.
    """

    bandpass: bool = True
    freq_min_hz: float = 300.0
    freq_max_hz: float = 6000.0
    order: int = 2
    initial_state: Literal["steady", "zero"] = "steady"
    common_reference: Literal["global", "none"] = "global"
    reference_operator: Literal["median", "average"] = "median"

    def validate(self, where: str = "causal_preprocess") -> None:
        require(self.freq_min_hz > 0, f"{where}.freq_min_hz", f"must be > 0; got {self.freq_min_hz}")
        require(self.freq_max_hz > self.freq_min_hz, f"{where}.freq_max_hz",
                f"must be above freq_min_hz={self.freq_min_hz}; got {self.freq_max_hz}")
        require(1 <= self.order <= 8, f"{where}.order", f"must be in [1, 8]; got {self.order}")
        require(self.initial_state in ("steady", "zero"), f"{where}.initial_state",
                f"must be 'steady' or 'zero'; got {self.initial_state!r}")
        require(self.common_reference in ("global", "none"), f"{where}.common_reference",
                f"must be 'global' or 'none'; got {self.common_reference!r}")
        require(self.reference_operator in ("median", "average"), f"{where}.reference_operator",
                f"must be 'median' or 'average'; got {self.reference_operator!r}")


class CausalPreprocessor:
    """Stateful: call it on consecutive blocks [n, C] of float32 µV; `reset()` starts a new stream."""

    def __init__(self, config: CausalPreprocessConfig, sampling_frequency: float, num_channels: int):
        config.validate()
        self.config = config
        self.num_channels = int(num_channels)
        self._sos = None
        if config.bandpass:
            from scipy import signal

            nyquist = sampling_frequency / 2
            require(config.freq_max_hz < nyquist, "causal_preprocess.freq_max_hz",
                    f"must be below the Nyquist frequency {nyquist:g} Hz; got {config.freq_max_hz:g}")
            self._sos = signal.butter(config.order, [config.freq_min_hz, config.freq_max_hz], btype="bandpass",
                                      fs=sampling_frequency, output="sos")
            self._steady = signal.sosfilt_zi(self._sos)  # [sections, 2] for a unit step
        self.reset()

    def reset(self) -> None:
        self._state = None  # [sections, 2, C] float64, set from the first sample

    def __call__(self, x_TxC: np.ndarray) -> np.ndarray:
        x = np.asarray(x_TxC, np.float32)
        if x.ndim != 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"expected a block [n, {self.num_channels}]; got shape {x.shape}")
        if x.shape[0] == 0:
            return x.copy()
        if self._sos is not None:
            from scipy import signal

            if self._state is None:
                first = x[0].astype(np.float64) if self.config.initial_state == "steady" else 0.0
                self._state = self._steady[:, :, None] * (first * np.ones(self.num_channels))[None, None, :]
            y, self._state = signal.sosfilt(self._sos, x.astype(np.float64), axis=0, zi=self._state)
            x = y.astype(np.float32)
        if self.config.common_reference == "global":
            operator = np.median if self.config.reference_operator == "median" else np.mean
            x = x - operator(x, axis=1, keepdims=True).astype(np.float32)
        return x


def causal_preprocess(recording: Recording, config: CausalPreprocessConfig, *, block_samples: int = 1 << 16,
                      out: np.ndarray | None = None) -> Recording:
    """The whole recording preprocessed in one sequential pass (what the online sorter computes
    block by block), as a Recording over `out` (a [T, C] float32 array, e.g. an
    np.lib.format.open_memmap for long recordings; default: a new array in memory). Its
    metadata[EXTRA_KEY] holds the settings (see `checkpoint_extra`)."""
    shape = (recording.num_samples, recording.num_channels)
    out = np.empty(shape, np.float32) if out is None else out
    if tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}; expected {shape}")
    step = CausalPreprocessor(config, recording.sampling_frequency, recording.num_channels)
    for start, block in recording.iter_chunks(block_samples):
        out[start:start + block.shape[0]] = step(block)
    metadata = {**recording.metadata, EXTRA_KEY: to_dict(config)}
    return dataclasses.replace(recording, traces=ArrayTraces(out), metadata=metadata)


def checkpoint_extra(recording: Recording) -> dict:
    """What to pass as `metadata_extra` when training on `recording` (esort_jax.pipeline.fit), so
    the checkpoint records how its traces were preprocessed causally ({} when they were not)."""
    recorded = recording.metadata.get(EXTRA_KEY)
    return {EXTRA_KEY: recorded} if recorded else {}


def resolve_preprocess(extra: dict, requested) -> CausalPreprocessConfig | None:
    """The causal preprocessing to apply to a raw stream for a network whose checkpoint metadata
    `extra` is given. `requested`: 'checkpoint' (what the checkpoint records; none if nothing
    was recorded), 'none' (the stream is already what the network expects; nothing is checked),
    or a CausalPreprocessConfig / mapping, which must equal the recorded settings.

    Raises PreprocessMismatchError when the network was trained on zero-phase (offline)
    preprocessing ('checkpoint'), or the requested settings differ from the recorded ones."""
    recorded = extra.get(EXTRA_KEY)
    recorded = from_dict(CausalPreprocessConfig, recorded, EXTRA_KEY) if recorded else None
    if isinstance(requested, str):
        if requested not in ("checkpoint", "none"):
            raise PreprocessMismatchError(f"preprocess: must be 'checkpoint', 'none' or a config; got {requested!r}")
        if requested == "none":
            return None
        offline = extra.get("preprocess")
        if recorded is None and offline and offline.get("enabled", True):
            raise PreprocessMismatchError(
                "the network was trained on zero-phase (offline) preprocessed traces "
                f"({offline}), which a stream cannot reproduce causally: train it on "
                "causal_preprocess(...) data, or pass preprocess='none' if the stream is already "
                "preprocessed the same way")
        return recorded
    wanted = from_dict(CausalPreprocessConfig, requested if isinstance(requested, dict) else to_dict(requested),
                       "preprocess")
    if recorded is None:
        raise PreprocessMismatchError(
            "preprocess: the network was not trained on causally preprocessed traces (its checkpoint "
            f"records no {EXTRA_KEY}); refusing to feed it {wanted}")
    if wanted != recorded:
        diff = {k: (v, getattr(recorded, k)) for k, v in to_dict(wanted).items() if getattr(recorded, k) != v}
        raise PreprocessMismatchError(
            f"preprocess: differs from the network's training preprocessing (requested, recorded): {diff}")
    return recorded
