"""Convolution-form inference: the network at every sample of a recording, chunked and sharded.

Indexing. Output column t belongs to the window that STARTS at sample t (samples t … t+W-1);
the window is "about" its anchor sample t + anchor (`InferenceParams.anchor`). A recording of
T samples gives T - W + 1 columns. Callers that want anchor-indexed traces shift by `anchor`
(e.g. `postprocess.find_spikes(..., sample_offset=start + params.anchor)`).

Folding. In eval mode every BatchNorm is an affine map, so the network is, per window x [W, C]:

  a1[c, f] = relu(scale1[c] · (x[:, c] · k1[:, f]) + shift1[c, f])   k1 shared by channels
  a2[c, g] = relu(scale2[c] · (a1[c] · k2[:, g]) + shift2[c, g])     k2 shared by channels
  a3[s]    = relu(Σ_{c,g} a2[c, g] · k3[c, g, s] + b3[s])           spatial BN folded into k3, b3
  logit[n] = a3 · k4[:, n] + b4[n]

`fold_batchnorm(model)` computes these arrays (in float64, then float32) into the pytree
`InferenceParams`; everything after that is a pure function of arrays.

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

Chunks. `iter_probabilities` reads the recording chunk by chunk (`chunk_steps` outputs per
chunk need chunk_steps + W - 1 input samples: consecutive chunks overlap by exactly W - 1
samples, so results do not depend on the chunk size), pads the last chunk to the static shape
with its valid length (one compilation per shape), checks the chunk for NaN/inf inside the
jitted function, and yields (chunk_start, p [N, steps]) so post-processing can consume the
trace without ever holding all of P. A host thread reads ahead while the device computes.
With several local devices, consecutive chunks go to different devices (shard_map over a 1-D
mesh); results equal the single-device ones.

Naive reference. `naive_logits` evaluates window by window (it materialises the windows of a
block of steps and calls the folded dense network, or the Flax model itself); tests and the
benchmark compare against it.
"""

from __future__ import annotations

import dataclasses
import functools
import mmap
import queue
import threading
import warnings
from collections import deque
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from esort_jax.fast import native
from esort_jax.config import require
from esort_jax.recording import ArrayTraces, Recording

__all__ = [
    "InferenceParams",
    "InferenceConfig",
    "NonFiniteTracesError",
    "fold_batchnorm",
    "forward_windows",
    "conv_logits",
    "naive_logits",
    "iter_probabilities",
    "predict_probabilities",
]


# ---------------------------------------------------------------------------------------
# Folded parameters.


@dataclasses.dataclass(frozen=True)
class InferenceParams:
    """The network with BatchNorm folded in (eval mode): a pytree of float32 arrays.

    Attributes:
      k1_WxF1: first temporal filter, shared by channels (its bias is folded into shift1).
      scale1_C, shift1_CxF1: per-channel affine after filter 1 (BatchNorm over channels).
      k2_F1xF2: second temporal filter, shared by channels.
      scale2_C, shift2_CxF2: per-channel affine after filter 2.
      k3_CxF2xS, b3_S: spatial Dense with its BatchNorm(S) folded in, indexed [channel,
        feature, output] (the model stores the kernel as [S, F2·C]; see esort_jax.model).
      k4_SxN, b4_N: head (logits).
      anchor: static; index within the window of the sample the window is about.
    """

    k1_WxF1: Any
    scale1_C: Any
    shift1_CxF1: Any
    k2_F1xF2: Any
    scale2_C: Any
    shift2_CxF2: Any
    k3_CxF2xS: Any
    b3_S: Any
    k4_SxN: Any
    b4_N: Any
    anchor: int = 0

    @property
    def window(self) -> int:
        return int(self.k1_WxF1.shape[0])

    @property
    def num_channels(self) -> int:
        return int(self.k3_CxF2xS.shape[0])

    @property
    def num_units(self) -> int:
        return int(self.k4_SxN.shape[1])

    @property
    def temporal_features(self) -> tuple[int, int]:
        return int(self.k1_WxF1.shape[1]), int(self.k2_F1xF2.shape[1])

    @property
    def spatial_features(self) -> int:
        return int(self.k3_CxF2xS.shape[2])

    def flops_per_step(self) -> int:
        """Multiply-add FLOPs (2 per MAC) of the network at one time step (dense layers)."""
        (f1, f2), c, s = self.temporal_features, self.num_channels, self.spatial_features
        return 2 * (c * self.window * f1 + c * f1 * f2 + c * f2 * s + s * self.num_units)

    def check(self) -> None:
        """Raise ValueError unless the array shapes agree with each other."""
        w, (f1, f2), c = self.window, self.temporal_features, self.num_channels
        s, n = self.spatial_features, self.num_units
        expected = {
            "k1_WxF1": (w, f1), "scale1_C": (c,), "shift1_CxF1": (c, f1), "k2_F1xF2": (f1, f2),
            "scale2_C": (c,), "shift2_CxF2": (c, f2), "k3_CxF2xS": (c, f2, s), "b3_S": (s,),
            "k4_SxN": (s, n), "b4_N": (n,),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"InferenceParams.{name} has shape {got}; expected {shape}")
        if not 0 <= self.anchor < w:
            raise ValueError(f"InferenceParams.anchor must lie in [0, window={w}); got {self.anchor}")


_PARAM_FIELDS = [f.name for f in dataclasses.fields(InferenceParams) if f.name != "anchor"]
jax.tree_util.register_dataclass(InferenceParams, data_fields=_PARAM_FIELDS, meta_fields=["anchor"])


def _bn_affine(norm) -> tuple[np.ndarray, np.ndarray]:
    """(mul, add) of an eval-mode nnx.BatchNorm: y = x·mul + add, in float64."""
    mean = np.asarray(norm.mean[...], np.float64)
    var = np.asarray(norm.var[...], np.float64)
    mul = 1.0 / np.sqrt(var + float(norm.epsilon))
    if norm.scale is not None:
        mul = mul * np.asarray(norm.scale[...], np.float64)
    add = -mean * mul
    if norm.bias is not None:
        add = add + np.asarray(norm.bias[...], np.float64)
    return mul, add


def fold_batchnorm(model) -> InferenceParams:
    """InferenceParams of an `esort_jax.model.ESortNet`, BatchNorm in eval mode folded in.

    Uses the running statistics whatever the model's train/eval flag. Folding is done in
    float64 and rounded once to float32.
    """
    bb = model.backbone
    f64 = lambda a: np.asarray(a[...], np.float64)  # noqa: E731
    k1, b1 = f64(bb.temporal1.dense.kernel), f64(bb.temporal1.dense.bias)
    k2, b2 = f64(bb.temporal2.dense.kernel), f64(bb.temporal2.dense.bias)
    k3, b3 = f64(bb.spatial.dense.kernel).T, f64(bb.spatial.dense.bias)  # stored [S, F2·C] → [F2·C, S]
    k4, b4 = f64(model.head.kernel), f64(model.head.bias)
    window, num_channels = int(model.config.window), int(model.num_channels)
    if k1.shape[0] != window:
        raise ValueError(
            f"model.config.window = {window} but temporal1 has a kernel for {k1.shape[0]} samples"
        )
    mul1, add1 = _bn_affine(bb.temporal1.norm)  # [C]
    mul2, add2 = _bn_affine(bb.temporal2.norm)
    mul3, add3 = _bn_affine(bb.spatial.norm)  # [S]
    if mul1.shape != (num_channels,) or mul2.shape != (num_channels,):
        raise ValueError(
            f"temporal BatchNorms have {mul1.shape[0]}/{mul2.shape[0]} features; "
            f"expected one per channel ({num_channels})"
        )
    f2, s = k2.shape[1], k3.shape[1]
    as32 = lambda a: jnp.asarray(np.asarray(a, np.float32))  # noqa: E731
    params = InferenceParams(
        k1_WxF1=as32(k1),
        scale1_C=as32(mul1),
        shift1_CxF1=as32(mul1[:, None] * b1[None, :] + add1[:, None]),
        k2_F1xF2=as32(k2),
        scale2_C=as32(mul2),
        shift2_CxF2=as32(mul2[:, None] * b2[None, :] + add2[:, None]),
        k3_CxF2xS=as32((k3 * mul3[None, :]).reshape(f2, num_channels, s).transpose(1, 0, 2)),  # rows (g, c)
        b3_S=as32(b3 * mul3 + add3),
        k4_SxN=as32(k4),
        b4_N=as32(b4),
        anchor=int(model.config.anchor),
    )
    params.check()
    return params


def _dtype(name: str):
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16'; got {name!r}")
    return jnp.dtype(name)


def forward_windows(params: InferenceParams, x_BxWxC: jax.Array, compute_dtype: str = "float32"):
    """Logits [B, N] of windows [B, W, C] with the folded dense network (window by window)."""
    expected = (params.window, params.num_channels)
    if x_BxWxC.ndim != 3 or tuple(x_BxWxC.shape[1:]) != expected:
        raise ValueError(
            f"expected windows [batch, {expected[0]}, {expected[1]}] (time, channels) for this "
            f"model; got {tuple(x_BxWxC.shape)}"
        )
    dt, p = _dtype(compute_dtype), params
    mm = functools.partial(jnp.einsum, preferred_element_type=jnp.float32)
    h1 = mm("bwc,wf->bcf", x_BxWxC.astype(dt), p.k1_WxF1.astype(dt))
    a1 = jax.nn.relu(h1 * p.scale1_C[None, :, None] + p.shift1_CxF1[None])
    h2 = mm("bcf,fg->bcg", a1.astype(dt), p.k2_F1xF2.astype(dt))
    a2 = jax.nn.relu(h2 * p.scale2_C[None, :, None] + p.shift2_CxF2[None])
    h3 = mm("bcg,cgs->bs", a2.astype(dt), p.k3_CxF2xS.astype(dt))
    a3 = jax.nn.relu(h3 + p.b3_S[None])
    return mm("bs,sn->bn", a3.astype(dt), p.k4_SxN.astype(dt)) + p.b4_N[None]


# ---------------------------------------------------------------------------------------
# Convolution form.


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
    dt = _dtype(compute_dtype)
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


# ---------------------------------------------------------------------------------------
# Naive reference: window by window.


@functools.partial(jax.jit, static_argnames=("block_steps", "compute_dtype"))
def _naive_block(params, x_RxC, block_steps, compute_dtype):
    idx = np.arange(block_steps)[:, None] + np.arange(params.window)[None, :]
    return forward_windows(params, x_RxC[idx], compute_dtype)


@functools.partial(jax.jit, static_argnames=("graphdef", "block_steps"))
def _naive_block_flax(graphdef, state, x_RxC, block_steps):
    from flax import nnx

    model = nnx.merge(graphdef, state)
    model.eval()
    window = model.config.window
    idx = np.arange(block_steps)[:, None] + np.arange(window)[None, :]
    return model(x_RxC[idx])


def naive_logits(
    model_or_params, traces_TxC, *, block_steps: int = 256, compute_dtype: str = "float32"
) -> np.ndarray:
    """Reference logits [T - W + 1, N]: windows of `block_steps` consecutive steps are
    materialised ([block, W, C]) and evaluated one window per batch row, either by the folded
    dense network (InferenceParams) or by the Flax model itself (an ESortNet, eval mode)."""
    traces = np.asarray(traces_TxC, np.float32)
    if isinstance(model_or_params, InferenceParams):
        params = model_or_params
        window, num_channels = params.window, params.num_channels
        run = lambda x: _naive_block(params, x, block_steps, compute_dtype)  # noqa: E731
    else:
        from flax import nnx

        graphdef, state = nnx.split(model_or_params)
        window, num_channels = model_or_params.config.window, model_or_params.num_channels
        run = lambda x: _naive_block_flax(graphdef, state, x, block_steps)  # noqa: E731
    _check_traces_shape(traces.shape, window, num_channels)
    steps = traces.shape[0] - window + 1
    out = []
    for b0 in range(0, steps, block_steps):
        rows = traces[b0:b0 + block_steps + window - 1]
        if rows.shape[0] < block_steps + window - 1:
            rows = np.pad(rows, ((0, block_steps + window - 1 - rows.shape[0]), (0, 0)))
        out.append(np.asarray(run(jnp.asarray(rows))))
    return np.concatenate(out)[:steps]


def _check_traces_shape(shape, window: int, num_channels: int) -> None:
    if len(shape) != 2 or shape[1] != num_channels:
        raise ValueError(
            f"recording has shape {tuple(shape)} (samples, channels) but the model expects "
            f"{num_channels} channels"
        )
    if shape[0] < window:
        raise ValueError(
            f"recording has {shape[0]} samples, fewer than one window of {window}: nothing to infer"
        )


# ---------------------------------------------------------------------------------------
# Chunked, sharded driver.


class NonFiniteTracesError(ValueError):
    """The traces contain NaN or inf (the message names the first bad sample and channel)."""


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """How to run convolution-form inference over a recording.

    Attributes:
      chunk_steps: output steps (window positions) per chunk and device; a chunk reads
        chunk_steps + W - 1 samples. Rounded up to a multiple of block_steps.
      block_steps: output steps per block inside a chunk (intermediates of one block stay in
        cache); a multiple of `segment`.
      segment: output steps per banded-Toeplitz product in layer 1 (kernel 'xla').
      compute_dtype: 'float32', or 'bfloat16' (matmul inputs in bf16, accumulation and
        BatchNorm/bias in float32).
      kernel: how the temporal layers are computed. 'xla': banded-Toeplitz matrix products
        (any backend, either dtype); 'native': the fused C++ kernel of esort_jax.fast.native
        (CPU devices, float32; an error if it cannot be used); 'auto' (default): 'native'
        where it can be used, else 'xla' (with a warning if only the build failed).
      output_dtype: 'float32' or 'float16' probabilities on the host.
      prefetch: chunks (per device) a host thread reads ahead; 0 reads inline.
      num_devices: how many local devices to spread chunks over (None: all).
    """

    chunk_steps: int = 32768
    block_steps: int = 1024
    segment: int = 16
    compute_dtype: str = "float32"
    kernel: str = "auto"
    output_dtype: str = "float32"
    prefetch: int = 2
    num_devices: int | None = None

    def validate(self, where: str = "infer") -> None:
        require(self.segment >= 1, f"{where}.segment", f"must be >= 1; got {self.segment}")
        require(
            self.block_steps >= self.segment and self.block_steps % self.segment == 0,
            f"{where}.block_steps",
            f"must be a positive multiple of segment={self.segment}; got {self.block_steps}",
        )
        require(self.chunk_steps >= 1, f"{where}.chunk_steps", f"must be >= 1; got {self.chunk_steps}")
        require(
            self.compute_dtype in ("float32", "bfloat16"),
            f"{where}.compute_dtype",
            f"must be 'float32' or 'bfloat16'; got {self.compute_dtype!r}",
        )
        require(
            self.output_dtype in ("float32", "float16"),
            f"{where}.output_dtype",
            f"must be 'float32' or 'float16'; got {self.output_dtype!r}",
        )
        require(
            self.kernel in KERNELS, f"{where}.kernel", f"must be one of {KERNELS}; got {self.kernel!r}"
        )
        require(self.prefetch >= 0, f"{where}.prefetch", f"must be >= 0; got {self.prefetch}")
        require(
            self.num_devices is None or self.num_devices >= 1,
            f"{where}.num_devices",
            f"must be >= 1 or None; got {self.num_devices}",
        )

    @property
    def padded_chunk_steps(self) -> int:
        return -(-self.chunk_steps // self.block_steps) * self.block_steps

    def resolve_kernel(self, params: InferenceParams, devices=None, where: str = "infer") -> "InferenceConfig":
        """This config with `kernel` 'xla' or 'native': what 'auto' picks for these params on
        these devices (default: all local devices); ValueError if 'native' was asked for and
        cannot be used (the message says why)."""
        devices = tuple(jax.local_devices()) if devices is None else tuple(devices)
        obstacle = None
        if self.compute_dtype != "float32":
            obstacle = f"compute_dtype is {self.compute_dtype!r} (the native kernel is float32)"
        elif any(d.platform != "cpu" for d in devices):
            obstacle = f"devices are {sorted({d.platform for d in devices})} (the native kernel is CPU only)"
        elif not native.supports(params.temporal_features):
            obstacle = (
                f"no native kernel for temporal features {params.temporal_features} "
                f"(compiled for {sorted(native.SUPPORTED_FEATURES)})"
            )
        build_failure = None if obstacle or self.kernel == "xla" else native.unavailable_reason()
        if self.kernel == "native" and (obstacle or build_failure):
            raise ValueError(f"{where}.kernel = 'native' cannot be used: {obstacle or build_failure}")
        if self.kernel == "auto" and build_failure:
            _warn_native_unavailable(build_failure)
        use_native = self.kernel != "xla" and not obstacle and not build_failure
        return dataclasses.replace(self, kernel="native" if use_native else "xla")


KERNELS = ("auto", "xla", "native")


@functools.lru_cache(maxsize=None)
def _warn_native_unavailable(reason: str) -> None:
    warnings.warn(
        f"esort_jax: the native CPU kernel is unavailable ({reason}); inference uses the XLA path "
        "(correct, ~1.4x slower on CPU). Set infer.kernel=xla to silence this.",
        RuntimeWarning,
        stacklevel=3,
    )


def _chunk_probabilities(params, x_RxC, num_valid, *, config: InferenceConfig):
    """One chunk: p [N, chunk_steps] (columns >= num_valid are 0) and whether x is finite."""
    steps = config.padded_chunk_steps
    logits = conv_logits(
        params, x_RxC, block_steps=config.block_steps, segment=config.segment,
        compute_dtype=config.compute_dtype, kernel=config.kernel,
    )
    valid = (jnp.arange(steps) < num_valid)[None, :]
    p_NxS = jnp.where(valid, jax.nn.sigmoid(logits).T, 0.0).astype(config.output_dtype)
    return p_NxS, jnp.all(jnp.isfinite(x_RxC))


@functools.lru_cache(maxsize=16)
def _sharded_chunk_fn(devices: tuple, config: InferenceConfig):
    """jit(shard_map(chunk)) over a 1-D mesh of `devices`: inputs [D, R, C], [D] → [D, N, S], [D]."""
    mesh = jax.sharding.Mesh(np.asarray(devices), ("chunk",))
    spec = PartitionSpec("chunk")

    def per_device(params, x_1xRxC, valid_1):
        p, finite = _chunk_probabilities(params, x_1xRxC[0], valid_1[0], config=config)
        return p[None], finite[None]

    fn = jax.shard_map(
        per_device, mesh=mesh, in_specs=(PartitionSpec(), spec, spec), out_specs=(spec, spec)
    )
    return jax.jit(fn), mesh


def _as_source(recording) -> Any:
    """Something with .shape (T, C) and .read(start, stop) → float32 [stop-start, C]."""
    if isinstance(recording, Recording):
        return recording.traces
    if isinstance(recording, np.ndarray) or (hasattr(recording, "__array__") and not hasattr(recording, "read")):
        return ArrayTraces(np.asarray(recording))
    if hasattr(recording, "read") and hasattr(recording, "shape"):
        return recording
    raise TypeError(f"expected a Recording, a TraceSource or a [T, C] array; got {type(recording).__name__}")


def _first_nonfinite(x_RxC: np.ndarray) -> tuple[int, int]:
    bad = np.argwhere(~np.isfinite(x_RxC))  # row-major: earliest sample first
    return int(bad[0, 0]), int(bad[0, 1])


def _drop_mapped_pages(source, start: int, stop: int) -> None:
    """Release the pages of samples [start, stop) if `source` is an ArrayTraces over a
    read-only np.memmap (e.g. np.load(..., mmap_mode='r')). They are clean file pages, re-read
    on demand; without this the resident set grows by the bytes read, i.e. with the length
    of the recording. Best effort: anything else is left alone."""
    array = getattr(source, "array", None)
    mapping = getattr(array, "_mmap", None)
    if (
        not isinstance(array, np.memmap) or getattr(array, "mode", None) != "r"
        or not isinstance(mapping, mmap.mmap) or not hasattr(mapping, "madvise")
        or not array.flags.c_contiguous or stop <= start
    ):
        return
    try:
        base = np.frombuffer(mapping, np.uint8).ctypes.data
        row_bytes = array.strides[0]
        first = array.ctypes.data - base + start * row_bytes
        last = min(array.ctypes.data - base + stop * row_bytes, len(mapping))
        first -= first % mmap.PAGESIZE
        if last > first:
            mapping.madvise(mmap.MADV_DONTNEED, first, last - first)
    except (ValueError, OSError, AttributeError):
        pass


def _aligned_zeros(shape: tuple, dtype=np.float32, alignment: int = 64) -> np.ndarray:
    """Zeros whose data is `alignment`-byte aligned: jax.device_put then aliases it on CPU
    instead of copying (the array must not be written to afterwards)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(nbytes + alignment, np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def _read_group(source, group, rows: int, num_channels: int) -> np.ndarray:
    """Samples of each chunk [(sample_start, sample_stop)] of a group, zero-padded: [D, R, C]."""
    x = _aligned_zeros((len(group), rows, num_channels))
    for d, (s0, s1) in enumerate(group):
        if s1 > s0:
            x[d, : s1 - s0] = source.read(s0, s1)
            _drop_mapped_pages(source, s0, s1)
    return x


def _reader(source, jobs, rows, num_channels, out_q: queue.Queue, stop: threading.Event):
    """Host thread: read the groups of chunks in order into `out_q` (bounded)."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out_q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for group in jobs:
            if not put(("ok", _read_group(source, group, rows, num_channels))):
                return
    except BaseException as error:  # handed to the consumer, re-raised there
        put(("error", error))


def iter_probabilities(
    params: InferenceParams,
    recording,
    config: InferenceConfig | None = None,
    *,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (chunk_start, p_NxS) over the recording, in order, with bounded memory.

    Column j of p is the window starting at sample chunk_start + j (anchor sample
    chunk_start + j + params.anchor). The chunks tile the windows lying inside [start, stop):
    window starts start … stop - W, i.e. stop - start - W + 1 columns in total. p is float32 or
    float16 (config.output_dtype), a read-only host array the caller may keep (on CPU it is
    the device buffer itself, no copy).

    `recording`: a Recording, a TraceSource (.shape, .read) or a [T, C] array.
    Raises ValueError if the channel count differs from the model's or the span is shorter
    than a window; NonFiniteTracesError naming the first NaN/inf sample and channel.
    """
    config = InferenceConfig() if config is None else config
    config.validate()
    params.check()
    source = _as_source(recording)
    total, num_channels = (int(n) for n in source.shape)
    stop = total if stop is None else int(stop)
    if not 0 <= start <= stop <= total:
        raise ValueError(f"span [{start}, {stop}) is outside the recording's {total} samples")
    window = params.window
    _check_traces_shape((stop - start, num_channels), window, params.num_channels)

    devices = tuple(jax.local_devices())
    devices = devices[: config.num_devices] if config.num_devices else devices
    config = config.resolve_kernel(params, devices)
    fn, mesh = _sharded_chunk_fn(devices, config)
    ndev = len(devices)
    steps = config.padded_chunk_steps
    rows = steps + window - 1
    num_steps = stop - start - window + 1
    chunk_starts = list(range(start, start + num_steps, steps))
    jobs = [
        [(c, min(c + rows, stop)) for c in chunk_starts[g:g + ndev]]
        for g in range(0, len(chunk_starts), ndev)
    ]
    shard = NamedSharding(mesh, PartitionSpec("chunk"))
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))

    stop_event = threading.Event()
    if config.prefetch > 0:
        q: queue.Queue = queue.Queue(maxsize=config.prefetch)
        thread = threading.Thread(
            target=_reader, args=(source, jobs, rows, num_channels, q, stop_event), daemon=True
        )
        thread.start()

        def next_input():
            kind, value = q.get()
            if kind == "error":
                raise value
            return value
    else:
        thread = None
        inline = iter(jobs)

        def next_input():
            return _read_group(source, next(inline), rows, num_channels)

    def dispatch(g):
        x = next_input()
        group = jobs[g]
        if x.shape[0] < ndev:  # last group: idle devices get a zero chunk
            x = np.concatenate([x, np.zeros((ndev - x.shape[0],) + x.shape[1:], x.dtype)])
        valid = np.zeros(ndev, np.int32)
        for d, (c0, _) in enumerate(group):
            valid[d] = min(steps, start + num_steps - c0)
        p, finite = fn(params, jax.device_put(x, shard), jax.device_put(valid, shard))
        return group, valid, x, p, finite

    pending: deque = deque()
    try:
        for g in range(len(jobs)):
            pending.append(dispatch(g))
            if len(pending) < 2 and g + 1 < len(jobs):
                continue  # keep one group computing while the previous one is consumed
            yield from _collect(pending.popleft())
        while pending:
            yield from _collect(pending.popleft())
    finally:
        stop_event.set()
        if thread is not None:
            thread.join(timeout=5.0)


def _collect(item) -> Iterator[tuple[int, np.ndarray]]:
    group, valid, x, p, finite = item
    finite = np.asarray(finite)
    p = np.asarray(p)
    for d, (c0, _) in enumerate(group):
        if not finite[d]:
            row, channel = _first_nonfinite(x[d])
            raise NonFiniteTracesError(
                f"traces are not finite: first bad value {x[d, row, channel]} at sample {c0 + row}, "
                f"channel {channel}"
            )
        yield c0, p[d, :, : valid[d]]


def predict_probabilities(
    params: InferenceParams,
    recording,
    config: InferenceConfig | None = None,
    *,
    start: int = 0,
    stop: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """All probability traces P [N, stop - start - W + 1] (column j: window starting at
    start + j). N·T can be large (100 units × 100 s × 32 kHz × 4 B = 1.3 GB): consider
    output_dtype='float16', an `out` array (e.g. np.lib.format.open_memmap), or
    `iter_probabilities` to stream."""
    config = InferenceConfig() if config is None else config
    source = _as_source(recording)
    stop = int(source.shape[0]) if stop is None else int(stop)
    num_steps = stop - start - params.window + 1
    shape = (params.num_units, max(num_steps, 0))
    if out is None:
        out = np.empty(shape, np.dtype(config.output_dtype))
    elif tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}; expected {shape}")
    for c0, p in iter_probabilities(params, source, config, start=start, stop=stop):
        out[:, c0 - start: c0 - start + p.shape[1]] = p
    return out
