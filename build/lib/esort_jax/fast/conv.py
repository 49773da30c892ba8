"""Inference in convolution form: the folded network (esort_jax.infer.InferenceParams) at every
window position of a stretch of traces, as a few large matrix products per block of positions.

    logits_TxN = conv_logits(params, x_TxC, block_steps=1024, segment=16, kernel="xla")

Row t of the result is the window starting at sample t (T - W + 1 rows). esort_jax.infer runs
this per chunk of a recording; tests/test_fast_conv.py checks it against the Flax model
(esort_jax.model) evaluated window by window.

Convolution form (`conv_logits`). Layer 1 is a 1-D convolution over time; layers 2–4 act on
each time step. A chunk is processed in blocks of `block_steps` output steps (`lax.map`), so a
block's intermediates (~12 MB at 384 channels and 512 steps) stay in cache. Inside a block,
time is cut into segments of `segment` = L steps (output step b = jL + i); segment j needs
input rows [jL, jL + U), U = L + W - 1. Stacking those rows u-major, seg[u, j, c] =
x[jL + u, c] (U/L times the input, built from L-row slices), makes layer 1 ONE matrix product
with a banded Toeplitz expansion of k1:
  h1[(f, i), (j, c)] = Σ_u T[(f, i), u] · seg[u, (j, c)],   T[(f, i), u] = k1[u - i, f]
([F1·L, U] × [U, J·C]; the Toeplitz does U/W = 1.25× the direct FLOPs of layer 1 at L = 16).
Channels stay minor throughout: layer 2 is one product [F2, F1] × [F1, (L, J, C)], the only
reordering is of whole channel rows ([F2, L, J, C] → [J, L, F2, C]), and the spatial weight
rows are permuted to (g, c) to match, so layer 3 is a plain [block, F2·C] × [F2·C, S] GEMM —
86% of the FLOPs and ~70% of the time. Measured alternatives (prototypes of the whole network
per block, one 2-core AVX2 CPU, 384 channels, 100 units, best of 6 runs): this form 1.27× real
time (149 GFLOP/s); rows (i, f) with layer 2 batched per position 1.25×; one batched GEMM per
segment with the Toeplitz as LHS (time-major output, no reordering) 1.00×; channel-major
Toeplitz GEMM + [C, B, F2] → [B, C, F2] transpose before layer 3 1.01×; im2col of each block
0.58×; lax.conv_general_dilated with channels as batch 0.67×, as a (time × channel) image
0.21×; layers 3–4 alone on a fake input 1.65× (the ceiling). benchmarks/bench_infer.py
prints the current figures.

Native temporal layers (`kernel='native'`, what 'auto' picks on CPU in float32). On XLA:CPU the
Toeplitz form above leaves ~35% of the time in the memory passes between the GEMMs
(BatchNorm/ReLU and the row reordering; XLA does not fuse elementwise work into dots there).
esort_jax.fast.native computes layers 1–2 with their BatchNorms and ReLUs in one C++ kernel
(through XLA's FFI) that writes the spatial layer's input rows [block, F2·C] directly; the
spatial GEMM and the head stay in XLA. Measured in experiments/benchmark.py at 384 channels:
88% of the matmul peak against 66% for the XLA path in the same run (README).

"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from esort_jax.fast import native

if TYPE_CHECKING:
    from esort_jax.infer import InferenceParams

__all__ = ["conv_logits", "parse_compute_dtype"]


def parse_compute_dtype(name: str):
    """The jnp dtype of a compute_dtype setting ('float32' or 'bfloat16'); ValueError otherwise."""
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16'; got {name!r}")
    return jnp.dtype(name)


def _toeplitz(k1_WxF1: jax.Array, segment: int) -> jax.Array:
    """T[(f, i), u] = k1[u - i, f] (0 where u - i is outside [0, W)): [F1·L, L + W - 1]."""
    window, f1 = k1_WxF1.shape
    lag = np.arange(segment + window - 1)[None, :] - np.arange(segment)[:, None]  # [L, U]
    inside = (lag >= 0) & (lag < window)
    t_LxUxF = jnp.where(inside[:, :, None], k1_WxF1[np.clip(lag, 0, window - 1)], 0.0)
    return t_LxUxF.transpose(2, 0, 1).reshape(f1 * segment, segment + window - 1)


def _block_logits(kernel: dict, x_RxC: jax.Array, block: int, segment: int, dt) -> jax.Array:
    """Logits [block, N] from input rows [block + W - 1, C] (time-major).

    Output step b = j·L + i (segment j, position i). Layer 1 is ONE matrix product
    toeplitz [(f, i), u] × seg [u, (j, c)] with seg[u, j, c] = x[jL + u, c]; its result
    [F1, L, J, C] keeps channels minor, so layer 2 is one product [F2, F1] × [F1, (L, J, C)],
    and the only reordering is of whole channel rows ([F2, L, J, C] → [J, L, F2, C]) before
    the spatial layer, whose weight rows are permuted to (g, c) to match.
    """
    window = x_RxC.shape[0] - block + 1
    num_channels = x_RxC.shape[1]
    f2, f1 = kernel["k2t"].shape
    span = segment + window - 1  # input rows per segment (u)
    nseg = block // segment  # J
    nsub = -(-span // segment)  # segment-sized pieces one segment's input spans (Q)
    rows = (nseg + nsub) * segment
    x = jnp.pad(x_RxC.astype(dt), ((0, rows - x_RxC.shape[0]), (0, 0)))
    x_LxPxC = x.reshape(nseg + nsub, segment, num_channels).transpose(1, 0, 2)
    # seg[q·L + r, j] = x[(j + q)·L + r] = x[j·L + u]
    seg_UxJxC = jnp.concatenate([x_LxPxC[:, q:q + nseg] for q in range(nsub)], axis=0)[:span]
    h1 = jnp.dot(kernel["toeplitz"], seg_UxJxC.reshape(span, nseg * num_channels),
                 preferred_element_type=jnp.float32)
    h1_FxLxJxC = h1.reshape(f1, segment, nseg, num_channels)
    a1 = jax.nn.relu(h1_FxLxJxC * kernel["scale1"][None, None, None] + kernel["shift1"][:, None, None])
    h2 = jnp.dot(kernel["k2t"], a1.astype(dt).reshape(f1, -1), preferred_element_type=jnp.float32)
    h2_GxLxJxC = h2.reshape(f2, segment, nseg, num_channels)
    a2 = jax.nn.relu(h2_GxLxJxC * kernel["scale2"][None, None, None] + kernel["shift2"][:, None, None])
    a2_BxGC = a2.astype(dt).transpose(2, 1, 0, 3).reshape(block, f2 * num_channels)
    return _spatial_and_head(kernel, a2_BxGC, dt)


def _spatial_and_head(kernel: dict, a2_BxGC: jax.Array, dt) -> jax.Array:
    """Layers 3-4 of a block: logits [B, N] from the temporal layers' output rows (g, c)."""
    h3 = jnp.dot(a2_BxGC, kernel["k3"], preferred_element_type=jnp.float32)
    a3 = jax.nn.relu(h3 + kernel["b3"][None]).astype(dt)
    return jnp.dot(a3, kernel["k4"], preferred_element_type=jnp.float32) + kernel["b4"][None]


def _native_block_logits(kernel: dict, x_RxC: jax.Array) -> jax.Array:
    """`_block_logits` with both temporal layers in the fused native CPU kernel (float32)."""
    a2_BxGC = native.temporal_layers(
        x_RxC, kernel["k1"], kernel["scale1"], kernel["shift1"], kernel["k2"], kernel["scale2"],
        kernel["shift2"],
    )
    return _spatial_and_head(kernel, a2_BxGC, jnp.float32)


def _kernel_arrays(params: InferenceParams, segment: int, dt) -> dict:
    """The folded parameters laid out for the time-major block kernel."""
    f2, c = params.temporal_features[1], params.num_channels
    return {
        "k1": params.k1_WxF1,
        "toeplitz": _toeplitz(params.k1_WxF1, segment).astype(dt),
        "scale1": params.scale1_C,
        "shift1": params.shift1_CxF1.T,  # [F1, C]
        "k2": params.k2_F1xF2,  # [F1, F2] (native kernel)
        "k2t": params.k2_F1xF2.T.astype(dt),  # [F2, F1]
        "scale2": params.scale2_C,
        "shift2": params.shift2_CxF2.T,  # [F2, C]
        "k3": params.k3_CxF2xS.transpose(1, 0, 2).reshape(f2 * c, -1).astype(dt),  # rows (g, c)
        "b3": params.b3_S,
        "k4": params.k4_SxN.astype(dt),
        "b4": params.b4_N,
    }


def conv_logits(
    params: InferenceParams,
    x_TxC: jax.Array,
    *,
    block_steps: int = 1024,
    segment: int = 16,
    compute_dtype: str = "float32",
    kernel: str = "xla",
) -> jax.Array:
    """Logits [T - W + 1, N] of every window of x [T, C] (row t: the window starting at t).

    Convolution form, processed in blocks of `block_steps` outputs (a multiple of `segment`).
    kernel='xla' computes the temporal layers as banded-Toeplitz matrix products (any
    backend); 'native' in the fused C++ kernel of esort_jax.fast.native (CPU, float32 only;
    `segment` is then unused). Pure and jittable; shapes are static.
    """
    if kernel not in ("xla", "native"):
        raise ValueError(f"kernel must be 'xla' or 'native'; got {kernel!r}")
    if kernel == "native" and compute_dtype != "float32":
        raise ValueError(f"the native kernel computes in float32; got compute_dtype={compute_dtype!r}")
    dt = parse_compute_dtype(compute_dtype)
    window, num_channels = params.window, params.num_channels
    if x_TxC.ndim != 2 or x_TxC.shape[1] != num_channels:
        raise ValueError(
            f"expected traces [T, {num_channels}] (time, channels) for this model; "
            f"got {tuple(x_TxC.shape)}"
        )
    if x_TxC.shape[0] < window:
        raise ValueError(f"traces have {x_TxC.shape[0]} samples, fewer than one window ({window})")
    if kernel == "xla" and block_steps % segment:
        raise ValueError(f"block_steps={block_steps} must be a multiple of segment={segment}")
    steps = x_TxC.shape[0] - window + 1
    nblocks = -(-steps // block_steps)
    x = jnp.pad(x_TxC, ((0, nblocks * block_steps - steps), (0, 0)))
    arrays = _kernel_arrays(params, segment, dt)

    def one_block(b):
        rows = lax.dynamic_slice_in_dim(x, b * block_steps, block_steps + window - 1, axis=0)
        if kernel == "native":
            return _native_block_logits(arrays, rows)
        return _block_logits(arrays, rows, block_steps, segment, dt)

    logits = lax.map(one_block, jnp.arange(nblocks))
    return logits.reshape(nblocks * block_steps, -1)[:steps]
