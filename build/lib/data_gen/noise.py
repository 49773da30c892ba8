"""Gaussian background noise: spatially correlated, band-limited, random-access.


Construction, per fixed block of output samples:
  1. white: i.i.d. unit-variance normal float32 at a reduced rate fs_lo = fs x down / up (the smallest
     such rate above 2.1 x lowpass_hz; 12.8 kHz for 32 kHz and 6 kHz), in sub-blocks of 128
     low-rate samples, sub-block j drawn from `np.random.default_rng([seed, NOISE, j + 1])`:
     any span is produced without generating what precedes it, and an output block (of
     `block_samples` low-rate samples) needs only the few sub-blocks around it (the
     interpolation's halo), so blocks are independent and computed in parallel threads.
     normal_sampler 'lookup' (default) maps 16-bit uniform integers (the generator's raw
     64-bit outputs split in four) through the standard
     normal's inverse CDF (a 65 536-level discretised N(0, 1), |z| <= 4.3, rescaled to unit
     variance; ~3x faster than numpy's ziggurat, which 'ziggurat' uses). After steps 2-3 each
     value is a weighted sum of tens of such draws, Gaussian to within test precision;
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
import scipy.special

from data_gen.config import NoiseConfig
from data_gen.seeding import stream_rng

__all__ = ["NoiseSource", "mixing_matrix", "resampling_factors", "channel_correlation"]

_TAPS_PER_PHASE = 12  # low-rate samples per output value
_KAISER_BETA = 5.0
_GROUP = 4  # each GEMM maps up * _GROUP outputs from their low-rate window
_CHANNEL_BLOCK = 48
_SUB_BLOCK = 128  # low-rate samples per seeded white sub-block
_CACHE_BLOCKS = 3
_LOOKUP_BITS = 16


def _normal_table() -> np.ndarray:
    """float32 [2^16] standard-normal quantiles at the bin centres, rescaled to unit variance."""
    levels = 1 << _LOOKUP_BITS
    z = scipy.special.ndtri((np.arange(levels) + 0.5) / levels)
    return (z / np.sqrt(np.mean(z**2))).astype(np.float32)


_NORMAL_TABLE = _normal_table()

# Every matrix product is issued as a stack of small GEMMs (M x N x K below 2^18, under
# which OpenBLAS always runs single-threaded): results do not depend on the BLAS thread
# setting (OpenBLAS's 1- and 2-thread sgemm differ in the last bits, which would break exact
# chunking when blocks are computed in different threads), and BLAS threads do not spin
# against data_gen's own block-level threads.
_GEMM_BUDGET = 200_000


def _row_tile(k: int, n: int, rows: int) -> int:
    """Largest power of two r <= 128 dividing `rows` with r * k * n <= _GEMM_BUDGET (>= 1)."""
    r = 128
    while r > 1 and (r * k * n > _GEMM_BUDGET or rows % r):
        r //= 2
    return r


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
    The blocks a read needs are computed by `workers` threads (numpy's bit generator, take
    and BLAS release the GIL); blocks cut by a read's ends are cached (a few), so sequential
    chunked reads compute every block once. Safe to read from several threads.
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
        # std_uv is folded into the last linear step: the interpolation, or else the mixing.
        self._mixing_scale = np.float32(1.0) if self.up > 1 else self.std
        self._bands = self._channel_bands(self.mixing * self._mixing_scale)
        if self.up > 1:
            self._interp_scaled = (self.interp * self.std).astype(np.float32)
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
        """[(c0, c1, lo, hi, M[lo:hi, c0:c1])]: output channel blocks and their input ranges
        (None when M is diagonal)."""
        num = mixing.shape[0]
        if np.count_nonzero(mixing - np.diag(np.diag(mixing))) == 0:
            return None
        bands = []
        for c0 in range(0, num, _CHANNEL_BLOCK):
            c1 = min(num, c0 + _CHANNEL_BLOCK)
            rows = np.flatnonzero(np.any(mixing[:, c0:c1] != 0, axis=1))
            lo, hi = int(rows.min()), int(rows.max()) + 1
            bands.append((c0, c1, lo, hi, np.ascontiguousarray(mixing[lo:hi, c0:c1])))
        return bands

    def _white(self, first: int, stop: int) -> tuple[np.ndarray, int]:
        """(buffer, offset): unit white noise for the sub-blocks covering low-rate samples
        [first, stop) (first >= -128); sample `first` is buffer row `offset`."""
        j0, j1 = first // _SUB_BLOCK, -(-stop // _SUB_BLOCK)
        buffer = np.empty(((j1 - j0) * _SUB_BLOCK, self.num_channels), np.float32)
        lookup = self.config.normal_sampler == "lookup"
        for j in range(j0, j1):
            rng = stream_rng(self.seed, "noise", j + 1)
            rows = buffer[(j - j0) * _SUB_BLOCK : (j - j0 + 1) * _SUB_BLOCK]
            if lookup:
                # Four 16-bit codes per raw 64-bit PCG64 output (little-endian view); codes
                # always index the 2^16 table, so mode="wrap" only skips the bounds check.
                codes = rng.bit_generator.random_raw(rows.size // 4).view(np.uint16).reshape(rows.shape)
                np.take(_NORMAL_TABLE, codes, out=rows, mode="wrap")
            else:
                rng.standard_normal(dtype=np.float32, out=rows)
        return buffer, first - j0 * _SUB_BLOCK

    def _compute_block(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """Output block `index`, written into `out` ([block_samples, C], C-contiguous) if given."""
        if out is None:
            out = np.empty((self.block_samples, self.num_channels), np.float32)
        if self.std == 0:
            out[...] = 0.0
            return out
        first = index * self.block_low - self.left
        count = self.block_low + self.left + self.right
        white, offset = self._white(first, first + count)
        if self._bands is None:
            mixed = white[offset : offset + count] * self._mixing_scale
        else:
            rows = white.shape[0]
            full = np.empty(white.shape, np.float32)
            for c0, c1, lo, hi, m in self._bands:
                tile = _row_tile(hi - lo, c1 - c0, rows)
                np.matmul(
                    white[:, lo:hi].reshape(rows // tile, tile, hi - lo),
                    m,
                    out=full[:, c0:c1].reshape(rows // tile, tile, c1 - c0),
                )
            mixed = full[offset : offset + count]
        if self.up == 1:
            out[...] = mixed
            return out
        groups = self.block_low // (self.down * _GROUP)
        windows = np.lib.stride_tricks.as_strided(
            mixed,
            shape=(groups, self.window, self.num_channels),
            strides=(self.down * _GROUP * mixed.strides[0], mixed.strides[0], mixed.strides[1]),
            writeable=False,
        )
        grouped = out.reshape(groups, self._interp_scaled.shape[0], self.num_channels)
        step = max(1, _GEMM_BUDGET // self._interp_scaled.size)
        for c0 in range(0, self.num_channels, step):
            np.matmul(self._interp_scaled, windows[:, :, c0 : c0 + step], out=grouped[:, :, c0 : c0 + step])
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

    def read(self, start: int, stop: int) -> np.ndarray:
        """float32 [stop - start, C] µV noise for samples [start, stop).

        Blocks inside the span are computed straight into the result (by `workers` threads);
        blocks cut by the span's ends go through the cache, for the neighbouring read.
        """
        if not 0 <= start <= stop:
            raise IndexError(f"invalid span [{start}, {stop})")
        size = self.block_samples
        out = np.empty((stop - start, self.num_channels), np.float32)
        jobs = []
        for index in range(start // size, -(-stop // size)):
            b0 = index * size
            lo, hi = max(start, b0), min(stop, b0 + size)
            if lo == b0 and hi == b0 + size:
                jobs.append((self._compute_block, index, out[b0 - start : b0 - start + size]))
            else:
                jobs.append((self._copy_part, index, (out[lo - start : hi - start], lo - b0, hi - b0)))
        if len(jobs) > 1 and self.workers > 1:
            with self._lock:
                if self._pool is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="data_gen-noise")
            for future in [self._pool.submit(fn, index, arg) for fn, index, arg in jobs]:
                future.result()
        else:
            for fn, index, arg in jobs:
                fn(index, arg)
        return out

    def _copy_part(self, index: int, target) -> None:
        rows, lo, hi = target
        rows[...] = self.block(index)[lo:hi]
