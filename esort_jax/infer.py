"""Inference: the trained network at every window position of a recording, chunked and sharded.

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

Convolution form. Layer 1 is a 1-D convolution over time and layers 2–4 act on each time
step, so the folded network at every window position of a chunk is a few large matrix products
per block of positions (esort_jax.fast.conv.conv_logits): banded-Toeplitz products on any
backend (`kernel='xla'`), or the two temporal layers in one fused C++ kernel on CPU in float32
(`kernel='native'`, what 'auto' picks there; esort_jax.fast.choose_kernel decides).

Chunks. `iter_probabilities` reads the recording chunk by chunk (`chunk_steps` outputs per
chunk need chunk_steps + W - 1 input samples: consecutive chunks overlap by exactly W - 1
samples, so results do not depend on the chunk size), pads the last chunk to the static shape
with its valid length (one compilation per shape), checks the chunk for NaN/inf inside the
jitted function, and yields (chunk_start, p [N, steps]) so post-processing can consume the
trace without ever holding all of P. A host thread reads ahead while the device computes
(esort_jax.runtime.prefetch). With several local devices, consecutive chunks go to different
devices (shard_map over a 1-D mesh); results equal the single-device ones.

Naive reference. `naive_logits` evaluates window by window (it materialises the windows of a
block of steps and calls the folded dense network `forward_windows`, or the Flax model itself,
esort_jax.model); tests and the benchmark compare the convolution form against it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import deque
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from esort_jax.config import require
from esort_jax.fast import KERNELS, choose_kernel
from esort_jax.fast.conv import conv_logits, parse_compute_dtype
from esort_jax.recording import ArrayTraces, Recording
from esort_jax.runtime.host_memory import aligned_zeros, drop_mapped_pages
from esort_jax.runtime.prefetch import Prefetcher

__all__ = [
    "InferenceParams",
    "InferenceConfig",
    "NonFiniteTracesError",
    "fold_batchnorm",
    "forward_windows",
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
    float64 and rounded once to float32. ValueError if a folded array holds a NaN or inf (a
    network that would sort nothing, silently).
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
    _check_finite(params)
    return params


def _check_finite(params: InferenceParams) -> None:
    for name in _PARAM_FIELDS:
        values = np.asarray(getattr(params, name))
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise ValueError(
                f"the folded network is not finite: InferenceParams.{name} holds {bad} NaN/inf value(s) "
                f"of {values.size} (non-finite or overflowing parameters or BatchNorm statistics)"
            )


def forward_windows(params: InferenceParams, x_BxWxC: jax.Array, compute_dtype: str = "float32"):
    """Logits [B, N] of windows [B, W, C] with the folded dense network (window by window)."""
    expected = (params.window, params.num_channels)
    if x_BxWxC.ndim != 3 or tuple(x_BxWxC.shape[1:]) != expected:
        raise ValueError(
            f"expected windows [batch, {expected[0]}, {expected[1]}] (time, channels) for this "
            f"model; got {tuple(x_BxWxC.shape)}"
        )
    dt, p = parse_compute_dtype(compute_dtype), params
    mm = functools.partial(jnp.einsum, preferred_element_type=jnp.float32)
    h1 = mm("bwc,wf->bcf", x_BxWxC.astype(dt), p.k1_WxF1.astype(dt))
    a1 = jax.nn.relu(h1 * p.scale1_C[None, :, None] + p.shift1_CxF1[None])
    h2 = mm("bcf,fg->bcg", a1.astype(dt), p.k2_F1xF2.astype(dt))
    a2 = jax.nn.relu(h2 * p.scale2_C[None, :, None] + p.shift2_CxF2[None])
    h3 = mm("bcg,cgs->bs", a2.astype(dt), p.k3_CxF2xS.astype(dt))
    a3 = jax.nn.relu(h3 + p.b3_S[None])
    return mm("bs,sn->bn", a3.astype(dt), p.k4_SxN.astype(dt)) + p.b4_N[None]


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
        """This config with `kernel` 'xla' or 'native' for these params on these devices (default:
        all local devices), as esort_jax.fast.choose_kernel decides (ValueError if 'native' was
        asked for and cannot be used; the message says why)."""
        devices = tuple(jax.local_devices()) if devices is None else tuple(devices)
        kernel = choose_kernel(
            self.kernel, purpose="infer", devices=devices, compute_dtype=self.compute_dtype,
            temporal_features=params.temporal_features, where=where,
        )
        return dataclasses.replace(self, kernel=kernel)


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


def _read_group(source, group, rows: int, num_channels: int) -> np.ndarray:
    """Samples of each chunk [(sample_start, sample_stop)] of a group, zero-padded: [D, R, C]
    (aligned, so that jax.device_put aliases it on CPU)."""
    x = aligned_zeros((len(group), rows, num_channels))
    for d, (s0, s1) in enumerate(group):
        if s1 > s0:
            x[d, : s1 - s0] = source.read(s0, s1)
            drop_mapped_pages(getattr(source, "array", None), s0, s1)
    return x


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
    steps = config.padded_chunk_steps
    rows = steps + window - 1
    chunk_starts = list(range(start, stop - window + 1, steps))
    groups = [  # one chunk per device: [(sample_start, sample_stop)], the last one cut at `stop`
        [(c, min(c + rows, stop)) for c in chunk_starts[g:g + len(devices)]]
        for g in range(0, len(chunk_starts), len(devices))
    ]
    reader = Prefetcher(lambda g: _read_group(source, groups[g], rows, num_channels), len(groups), config.prefetch)
    with reader:
        yield from _stream(params, groups, iter(reader), devices, config, stop - window + 1)


def _stream(params, groups, inputs, devices, config, end: int) -> Iterator[tuple[int, np.ndarray]]:
    """Dispatch each group of chunks (its samples from `inputs`) to the devices, keeping one
    group computing while the previous one is consumed; yield (chunk_start, p) in order. `end`:
    one past the last window start."""
    fn, mesh = _sharded_chunk_fn(devices, config)
    shard = NamedSharding(mesh, PartitionSpec("chunk"))
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    ndev, steps = len(devices), config.padded_chunk_steps

    def dispatch(group):
        x = next(inputs)
        if x.shape[0] < ndev:  # last group: idle devices get a zero chunk
            x = np.concatenate([x, np.zeros((ndev - x.shape[0],) + x.shape[1:], x.dtype)])
        valid = np.zeros(ndev, np.int32)
        for d, (c0, _) in enumerate(group):
            valid[d] = min(steps, end - c0)
        p, finite = fn(params, jax.device_put(x, shard), jax.device_put(valid, shard))
        return group, valid, x, p, finite

    pending: deque = deque()
    for g, group in enumerate(groups):
        pending.append(dispatch(group))
        if len(pending) < 2 and g + 1 < len(groups):
            continue
        yield from _collect(pending.popleft())
    while pending:
        yield from _collect(pending.popleft())


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
