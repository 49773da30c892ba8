"""Gaussian background noise: spatially correlated, band-limited, random-access.

Construction, per fixed block of output samples:
  1. white: i.i.d. N(0, 1) float32 at a reduced rate fs_lo = fs x down / up (the smallest
     such rate above 2.1 x lowpass_hz; 12.8 kHz for 32 kHz and 6 kHz), in sub-blocks of 128
     low-rate samples, sub-block j drawn from `np.random.default_rng([seed, NOISE, j + 1])`:
     any span is produced without generating what precedes it, and an output block (of
     `block_samples` low-rate samples) needs only the few sub-blocks around it (the
     interpolation's halo), so blocks are independent and computed in parallel threads;
  2. spatial: x @ M, M = (1 - mix) I + mix K, K[c', c] = exp(-d² / 2 l²) over sites within
     3 l (columns of K normalised), then every column of M scaled to unit norm, so each
     channel's variance stays exactly 1. Channels are depth-ordered, so M is banded: the
     product runs as one GEMM per block of 64 output channels against only the input
     channels that reach it. Neighbouring-site correlation is about mix-weighted kernel
     overlap (see `channel_correlation`);
  3. temporal: polyphase interpolation from fs_lo to fs with a Kaiser-windowed sinc low-pass
     at lowpass_hz (12 taps per output phase), i.e. band-limited noise like a 300-6000 Hz
     filtered recording (the 300 Hz high-pass is left out: it removes < 2 % of the power of
     white noise). Each output phase's taps are scaled to unit norm, so the variance is
     exactly 1 at every sample. Computed as a batched small matrix product (each group of
     `up x 4` outputs from its window of low-rate samples), ~40 flops per value.
  4. x std_uv.
Spatial mixing and temporal interpolation commute (one acts on channels, the other on
time), so doing the mixing at the low rate costs 2.5x less. With lowpass_hz None the noise is
white in time (fs_lo = fs, no step 3).

Every output block is computed from the same inputs with the same array shapes whatever
span is asked for, so a chunked read equals a one-shot read bit for bit.
"""

from __future__ import annotations

import collections
import math
import threading
from fractions import Fraction

import numpy as np
import scipy.signal

from data_gen.config import NoiseConfig
from data_gen.seeding import stream_rng

__all__ = ["NoiseSource", "mixing_matrix", "resampling_factors", "channel_correlation"]

_TAPS_PER_PHASE = 12  # low-rate samples per output value
_KAISER_BETA = 5.0
_GROUP = 4  # each GEMM maps up * _GROUP outputs from their low-rate window
_CHANNEL_BLOCK = 64
_SUB_BLOCK = 128  # low-rate samples per seeded white sub-block
_CACHE_BLOCKS = 4


def resampling_factors(fs: float, lowpass_hz: float | None, max_up: int = 8) -> tuple[int, int]:
    """(up, down) with fs x down / up >= 2.1 x lowpass_hz, smallest such rate; (1, 1) = white."""
    if lowpass_hz is None:
        return 1, 1
    need = 2.1 * lowpass_hz / fs
    if need >= 1.0:
        return 1, 1
    best = (1, 1)
    for up in range(2, max_up + 1):
        down = math.ceil(need * up - 1e-12)
        if down < up and Fraction(down, up) < Fraction(*best[::-1]):
            best = (up, down)
    frac = Fraction(best[1], best[0])
    return frac.denominator, frac.numerator


def mixing_matrix(channel_positions: np.ndarray, mix: float, length_um: float) -> np.ndarray:
    """float32 [C, C] M (noise = white @ M) with unit-norm columns, banded in depth order."""
    positions = np.asarray(channel_positions, dtype=np.float64)
    num = positions.shape[0]
    eye = np.eye(num)
    if mix <= 0:
        return eye.astype(np.float32)
    d2 = np.sum((positions[:, None, :] - positions[None, :, :]) ** 2, axis=-1)
    kernel = np.exp(-d2 / (2 * length_um**2))
    kernel[d2 > (3 * length_um) ** 2] = 0.0
    kernel /= np.linalg.norm(kernel, axis=0, keepdims=True)
    m = (1.0 - mix) * eye + mix * kernel
    m /= np.linalg.norm(m, axis=0, keepdims=True)
    return m.astype(np.float32)


def channel_correlation(mixing: np.ndarray) -> np.ndarray:
    """[C, C] correlation of the noise between channels implied by M (M^T M, unit diagonal)."""
    m = np.asarray(mixing, dtype=np.float64)
    return m.T @ m


def _interpolation_matrix(up: int, down: int, fs: float, lowpass_hz: float) -> tuple[np.ndarray, int, int]:
    """(H [up*G, window], left halo, window) so that y[group] = H @ x[group window]."""
    n_taps = up * _TAPS_PER_PHASE + 1
    rate_up = fs * down  # = fs_lo * up
    h = scipy.signal.firwin(n_taps, lowpass_hz, window=("kaiser", _KAISER_BETA), fs=rate_up)
    delay = (n_taps - 1) // 2
    outputs = up * _GROUP
    left = delay // up  # low-rate samples needed before the group's first
    last = ((outputs - 1) * down + delay) // up
    window = last + left + 1
    o = np.arange(outputs)[:, None]
    i = np.arange(window)[None, :]
    index = o * down - (i - left) * up + delay
    valid = (index >= 0) & (index < n_taps)
    matrix = np.where(valid, h[np.clip(index, 0, n_taps - 1)], 0.0)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix.astype(np.float32), left, window


class NoiseSource:
    """Random-access noise for channels at `channel_positions` (see module docstring).

    `read(start, stop)` -> float32 [stop - start, C] µV for any 0 <= start <= stop.
    Output blocks are cached (a few), so sequential chunked reads compute each block once;
    blocks a read needs are computed by `workers` threads (numpy's generator and BLAS release
    the GIL).
    """

    def __init__(self, config: NoiseConfig, channel_positions: np.ndarray, fs: float, seed: int, workers: int = 2):
        self.config = config
        self.seed = int(seed)
        self.num_channels = int(np.asarray(channel_positions).shape[0])
        self.std = np.float32(config.std_uv)
        self.up, self.down = resampling_factors(fs, config.lowpass_hz)
        self.fs_low = fs * self.down / self.up
        unit = math.lcm(self.down * _GROUP, _SUB_BLOCK) if self.up > 1 else _SUB_BLOCK
        self.block_low = -(-config.block_samples // unit) * unit  # low-rate samples per block
        self.block_samples = self.block_low * self.up // self.down  # output samples per block
        self.left = self.right = 0
        if self.up > 1:
            self.interp, self.left, self.window = _interpolation_matrix(self.up, self.down, fs, config.lowpass_hz)
            self.right = self.window - self.left - self.down * _GROUP
        self.mixing = mixing_matrix(channel_positions, config.spatial_mix, config.spatial_length_um)
        self._bands = self._channel_bands(self.mixing)
        self.workers = max(1, int(workers))
        self._pool = None
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_pool"], state["_lock"], state["_cache"] = None, None, collections.OrderedDict()
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @staticmethod
    def _channel_bands(mixing: np.ndarray):
        """[(c0, c1, lo, hi, M[lo:hi, c0:c1])]: output channel blocks and their input ranges."""
        num = mixing.shape[0]
        if np.array_equal(mixing, np.eye(num, dtype=mixing.dtype)):
            return None
        bands = []
        for c0 in range(0, num, _CHANNEL_BLOCK):
            c1 = min(num, c0 + _CHANNEL_BLOCK)
            rows = np.flatnonzero(np.any(mixing[:, c0:c1] != 0, axis=1))
            lo, hi = int(rows.min()), int(rows.max()) + 1
            bands.append((c0, c1, lo, hi, np.ascontiguousarray(mixing[lo:hi, c0:c1])))
        return bands

    def _white(self, first: int, stop: int) -> np.ndarray:
        """float32 [stop - first, C] unit white noise at low-rate samples [first, stop) (first >= -sub)."""
        j0, j1 = first // _SUB_BLOCK, -(-stop // _SUB_BLOCK)
        buffer = np.empty(((j1 - j0) * _SUB_BLOCK, self.num_channels), np.float32)
        for j in range(j0, j1):
            rng = stream_rng(self.seed, "noise", j + 1)
            rng.standard_normal(dtype=np.float32, out=buffer[(j - j0) * _SUB_BLOCK : (j - j0 + 1) * _SUB_BLOCK])
        offset = first - j0 * _SUB_BLOCK
        return buffer[offset : offset + stop - first]

    def _compute_block(self, index: int) -> np.ndarray:
        if self.std == 0:
            return np.zeros((self.block_samples, self.num_channels), np.float32)
        first = index * self.block_low - self.left
        white = self._white(first, (index + 1) * self.block_low + self.right)
        if self._bands is None:
            mixed = np.ascontiguousarray(white)
        else:
            mixed = np.empty(white.shape, np.float32)
            for c0, c1, lo, hi, m in self._bands:
                np.matmul(white[:, lo:hi], m, out=mixed[:, c0:c1])
        if self.up == 1:
            mixed *= self.std
            return mixed
        groups = self.block_low // (self.down * _GROUP)
        windows = np.lib.stride_tricks.as_strided(
            mixed,
            shape=(groups, self.window, self.num_channels),
            strides=(self.down * _GROUP * mixed.strides[0], mixed.strides[0], mixed.strides[1]),
            writeable=False,
        )
        out = np.matmul(self.interp, windows).reshape(self.block_samples, self.num_channels)
        out *= self.std
        return out

    def block(self, index: int) -> np.ndarray:
        """float32 [block_samples, C] µV: output samples [index * B, (index + 1) * B). Read-only."""
        with self._lock:
            cached = self._cache.get(index)
            if cached is not None:
                self._cache.move_to_end(index)
                return cached
        out = self._compute_block(index)
        out.flags.writeable = False
        with self._lock:
            self._cache[index] = out
            while len(self._cache) > _CACHE_BLOCKS:
                self._cache.popitem(last=False)
        return out

    def _blocks(self, indices: list[int]) -> list[np.ndarray]:
        with self._lock:
            missing = [i for i in indices if i not in self._cache]
        if len(missing) > 1 and self.workers > 1:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="data_gen-noise")
            list(self._pool.map(self.block, missing))
        return [self.block(i) for i in indices]

    def read(self, start: int, stop: int) -> np.ndarray:
        """float32 [stop - start, C] µV noise for samples [start, stop)."""
        if not 0 <= start <= stop:
            raise IndexError(f"invalid span [{start}, {stop})")
        size = self.block_samples
        out = np.empty((stop - start, self.num_channels), np.float32)
        indices = list(range(start // size, -(-stop // size)))
        for index, block in zip(indices, self._blocks(indices)):
            b0 = index * size
            lo, hi = max(start, b0), min(stop, b0 + size)
            out[lo - start : hi - start] = block[lo - b0 : hi - b0]
        return out
