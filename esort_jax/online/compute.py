"""The online sorter's device work: a fixed ladder of block shapes, each compiled once.

One call turns the input rows of a block of window positions into smoothed probabilities:

    rows [m + W - 1, C], tail [N, 2h]  ->  sm [N, m], next tail [N, 2h]

(m window positions; the tail holds the probabilities of the 2h positions before the block, so
smoothed value i is centred on position first - h + i and needs only positions up to first + i:
the smoothing lags h positions behind the network.) A push of k new positions is cut into
blocks from the ladder (`BlockCompute.plan`): blocks of the largest size while k exceeds it,
the rest either padded up to the smallest size that holds it or cut into sizes that fit (the
cheaper). Only ladder shapes are ever called, so nothing compiles after `warm_up`.

Equal to the offline sort by construction and by check: the network runs through the kernels of
`infer.conv_logits` (blocks of at most `InferenceConfig.block_steps` positions, larger blocks
mapped in offline-shaped pieces), probabilities round through `output_dtype` as in
`infer.iter_probabilities`, and smoothing is `postprocess.smooth_valid`, the peak picker's own
expression. Whether a block size gives bit-identical numbers is a property of the machine's
matrix-product kernels (here: matrix products of fewer than ~56 rows take another path and
differ in the last bit), so `warm_up` measures it: it runs every size on random traces and
compares with the offline path; with `exact` (default) the sizes that differ are dropped.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from esort_jax.config import require
from esort_jax.online import _shared

__all__ = ["OnlineConfig", "BlockCompute", "step_ladder", "CALL_COST"]

# What one call of the block function costs beyond its positions, in positions (dispatch, the
# copies in and out, the smoothing): measured ~0.05-0.1 ms per call, 2-8 positions' compute at
# 64-384 channels on the project's CPU; 16 leans towards fewer calls.
CALL_COST = 16


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
    """Shapes the online sorter compiles.

    Attributes:
      min_steps: smallest block of window positions computed in one call (smaller pushes are
        padded up to it). Small sizes keep the cost of a push of a few samples small; whether
        they round like the offline sort depends on the network's shapes and the machine (at
        384 channels on this CPU sizes below 64 do not), so `exact` decides at warm-up.
      max_steps: largest block; bigger pushes are split. Above `infer.block_steps`, sizes are
        multiples of it.
      exact: keep only block sizes whose numbers are bit-identical to the offline sort (checked
        at warm-up); false keeps every size (spikes may then differ at float ties).
    """

    min_steps: int = 8
    max_steps: int = 4096
    exact: bool = True

    def validate(self, where: str = "online") -> None:
        require(self.min_steps >= 1, f"{where}.min_steps", f"must be >= 1; got {self.min_steps}")
        require(self.max_steps >= self.min_steps, f"{where}.max_steps",
                f"must be >= min_steps={self.min_steps}; got {self.max_steps}")


def step_ladder(min_steps: int, max_steps: int, block_steps: int, granularity: int = 1) -> tuple[int, ...]:
    """Block sizes: 2^k and 1.5·2^k (multiples of `granularity`) from min_steps up to
    block_steps, then block_steps·2^j up to max_steps; min_steps (rounded up to the
    granularity) and the largest size that fits are always included."""
    top = min(max_steps, block_steps)
    first = -(-min_steps // granularity) * granularity
    sizes = {first} if first <= top else set()
    size = 1
    while size <= top:
        for value in (size, 3 * size // 2):
            if first <= value <= top and value % granularity == 0:
                sizes.add(value)
        size *= 2
    if top >= first:
        sizes.add(top - top % granularity)
    multiple = 2 * block_steps
    while multiple <= max_steps:
        sizes.add(multiple)
        multiple *= 2
    if not sizes:
        raise ValueError(f"no block size in [{min_steps}, {max_steps}] is a multiple of {granularity}")
    return tuple(sorted(sizes))


def _piece(arrays, rows_RxC, tail_NxH2, valid, *, window, config, half_width, normalisation):
    """sm [N, m] and the next tail [N, 2h] for one block (`valid` real positions of m)."""
    logits = _shared.block_logits(arrays, rows_RxC, window=window, config=config)
    p_NxM = jax.nn.sigmoid(logits).T.astype(config.output_dtype).astype(jnp.float32)
    x = jnp.concatenate([tail_NxH2, p_NxM], axis=1)
    sm = _shared.smooth_valid(x, half_width, normalisation)
    return sm, lax.dynamic_slice_in_dim(x, valid, 2 * half_width, axis=1)


def _end_smooth(tail_NxH2, *, half_width, normalisation):
    """sm of the last h positions of a trace that ends after the tail (zeros beyond)."""
    zeros = jnp.zeros((tail_NxH2.shape[0], half_width), jnp.float32)
    return _shared.smooth_valid(jnp.concatenate([tail_NxH2, zeros], axis=1), half_width, normalisation)


class BlockCompute:
    """The jitted block function, its ladder of shapes and the warm-up that compiles and checks them."""

    def __init__(self, params, infer, postprocess, config: OnlineConfig):
        config.validate()
        self.params = params
        self.infer = _shared.resolve_kernel(params, infer)
        self.window = params.window
        self.half_width = postprocess.half_width
        self.kernel_taps = postprocess.kernel_taps
        self.normalisation = postprocess.normalisation
        self.config = config
        granularity = self.infer.segment if self.infer.kernel == "xla" else 1
        self.sizes = step_ladder(config.min_steps, config.max_steps, self.infer.block_steps, granularity)
        self.arrays = jax.device_put(_shared.kernel_arrays(params, self.infer))
        smoothing = dict(half_width=self.half_width, normalisation=self.normalisation)
        self._piece = jax.jit(functools.partial(_piece, window=self.window, config=self.infer, **smoothing))
        self._end = jax.jit(functools.partial(_end_smooth, **smoothing))
        self.report: dict = {}
        self._plans: dict[int, list[tuple[int, int]]] = {}

    def zero_tail(self) -> jax.Array:
        return jnp.zeros((self.params.num_units, 2 * self.half_width), jnp.float32)

    def plan(self, steps: int) -> list[tuple[int, int]]:
        """(block size, real positions) covering `steps` new positions: blocks of the largest
        size while they fit, then the cheaper of padding the rest up to one size and cutting it
        into sizes that fit (only the last piece padded), each call counted as CALL_COST
        positions. The cover of each remainder (< the largest size, so at most that many) is kept:
        a stream's pushes repeat a few lengths."""
        pieces, largest, rest = [], self.sizes[-1], steps
        while rest >= largest:
            pieces.append((largest, largest))
            rest -= largest
        if rest and rest not in self._plans:
            self._plans[rest] = self._cover(rest)
        return pieces + (self._plans[rest] if rest else [])

    def _cover(self, steps: int) -> list[tuple[int, int]]:
        padded = [(self.sizes[bisect.bisect_left(self.sizes, steps)], steps)]
        cut, rest = [], steps
        while rest >= self.sizes[0]:
            size = self.sizes[bisect.bisect_right(self.sizes, rest) - 1]
            cut.append((size, size))
            rest -= size
        if rest:
            cut.append((self.sizes[0], rest))

        def cost(plan):
            return sum(size + CALL_COST for size, _ in plan)
        return cut if cost(cut) < cost(padded) else padded

    def run(self, rows_RxC: np.ndarray, valid: int, tail):
        """Dispatch one block (rows already padded to a ladder shape); returns device arrays."""
        return self._piece(self.arrays, rows_RxC, tail, np.int32(valid))

    def end(self, tail) -> np.ndarray:
        """sm [N, h] of the trace's last h positions (the trace ends after `tail`)."""
        return np.asarray(self._end(tail))

    def compiled_shapes(self) -> int:
        """How many shapes the block function has been compiled for (constant after warm-up)."""
        return self._piece._cache_size()

    def warm_up(self, seed: int = 0, scale_uv: float = 10.0) -> dict:
        """Compile every ladder size and check it against the offline path on random traces:
        probabilities (`infer.predict_probabilities` with the same InferenceConfig) and their
        smoothing (`postprocess.smooth`). Returns (and keeps in `report`) per size: compile
        seconds, one call's milliseconds, exact; with config.exact the sizes that are not exact
        leave the ladder."""
        w, h, largest = self.window, self.half_width, self.sizes[-1]
        first = 2 * h
        rng = np.random.default_rng((seed, 15))
        num_steps = first + largest + 1
        x = (scale_uv * rng.standard_normal((num_steps + w - 1, self.params.num_channels))).astype(np.float32)
        p_ref = _shared.predict_probabilities(self.params, x, self.infer).astype(np.float32)
        sm_ref = np.asarray(_shared.smooth(p_ref, self.kernel_taps, self.normalisation))
        sizes = {}
        for m in self.sizes:
            rows, tail = x[first:first + m + w - 1], jax.device_put(p_ref[:, :first])  # as at run time
            started = time.perf_counter()
            jax.block_until_ready(self.run(rows, m, tail))
            compiled = time.perf_counter() - started
            started = time.perf_counter()
            sm, next_tail = (np.asarray(a) for a in self.run(rows, m, tail))
            call_ms = 1e3 * (time.perf_counter() - started)
            exact = bool(np.array_equal(sm, sm_ref[:, first - h:first - h + m])
                         and np.array_equal(next_tail, p_ref[:, first + m - 2 * h:first + m]))
            sizes[m] = {"compile_s": round(compiled, 3), "call_ms": round(call_ms, 3), "exact": exact}
        end_sm = self.end(jax.device_put(p_ref[:, num_steps - 2 * h:]))
        end_exact = bool(np.array_equal(end_sm, sm_ref[:, num_steps - h:]))
        self._keep_exact(sizes, end_exact)
        self.report = {"kernel": self.infer.kernel, "sizes": sizes, "end_exact": end_exact,
                       "ladder": list(self.sizes)}
        return self.report

    def _keep_exact(self, sizes: dict, end_exact: bool) -> None:
        exact = tuple(m for m in self.sizes if sizes[m]["exact"])
        if exact and len(exact) < len(self.sizes) and self.config.exact:
            self.sizes = exact
            self._plans.clear()
        elif not exact or not end_exact:
            warnings.warn(
                "esort_jax.online: no compiled block size reproduces the offline probabilities bit "
                "for bit on this machine; online spikes may differ from the offline sort at float ties",
                RuntimeWarning, stacklevel=3,
            )
