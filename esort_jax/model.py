"""The E-Sort network (Flax NNX): shared temporal filters, a spatial filter, a per-unit head.

Per window x [W, C] (W samples of C channels, time-major like the recording):

  backbone.temporal1   Dense W→F1 on each channel's W samples, weights shared by all channels;
                       BatchNorm over channels (one scale/shift per channel); ReLU      → [C, F1]
  backbone.temporal2   Dense F1→F2 shared by channels; per-channel BatchNorm; ReLU        → [C, F2]
  backbone.spatial     flatten (feature-major) [F2·C] → Dense → S; BatchNorm(S); ReLU     → [S]
  head                 Dense S → N units (logits; sigmoid gives per-unit probabilities)

Paper sizes: W=60, F1=8, F2=16, S=256. Parameters that depend on the channel count C
(`*.norm` of the temporal filters, `spatial.dense`) or on the unit count N (`head`) sit in
their own named layers, so transfer can restore by name (see esort_jax.transfer).

Shapes as stored: temporal*.dense.kernel [F_in, F_out] (nnx.Linear), *.norm scale/bias/mean/var
[C] (or [S]), spatial.dense.kernel [S, F2·C] (column f·C + c: feature f of channel c; stored
transposed, see SpatialDense), head.kernel [S, N].

The layouts inside are chosen for the training step on CPU, whose cost beyond the three big
spatial GEMMs is memory traffic over the [F, B, C] activations (benchmarks/bench_train.py): the
temporal filters run feature-major with channels minor, bias + BatchNorm + ReLU of a temporal
filter is one custom-VJP function with few passes over its activations (`bias_norm_relu`), and
no kernel or gradient is transposed or permuted per step.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from esort_jax.fast import native
from esort_jax.config import require

__all__ = [
    "ModelConfig", "TemporalFilter", "bias_norm_relu", "SpatialDense", "SpatialFilter", "Backbone", "ESortNet",
    "window_flops", "contract_leading", "matmul_nt",
]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Network sizes. The channel and unit counts come from the data, not from here.

    Attributes:
      window: samples per window (W).
      anchor: index within the window of the sample the window is "about" (paper: 29, i.e.
        the 30th sample). Labels and reported spike times use window start + anchor.
      temporal_features: (F1, F2), outputs of the two shared temporal filters.
      spatial_features: S, output of the spatial filter.
      batchnorm_momentum: running-average decay (0.9 matches PyTorch's momentum=0.1).
      batchnorm_epsilon: added to the variance.
      compute_dtype: dtype of activations and matmuls ('float32' or 'bfloat16'); parameters
        stay float32.
    """

    window: int = 60
    anchor: int = 29
    temporal_features: tuple[int, int] = (8, 16)
    spatial_features: int = 256
    batchnorm_momentum: float = 0.9
    batchnorm_epsilon: float = 1e-5
    compute_dtype: str = "float32"

    def validate(self, where: str = "model") -> None:
        require(self.window >= 2, f"{where}.window", f"must be >= 2; got {self.window}")
        require(
            0 <= self.anchor < self.window,
            f"{where}.anchor",
            f"must lie in [0, window={self.window}); got {self.anchor}",
        )
        require(
            all(f >= 1 for f in self.temporal_features),
            f"{where}.temporal_features",
            f"must be positive; got {self.temporal_features}",
        )
        require(self.spatial_features >= 1, f"{where}.spatial_features", "must be >= 1")
        require(
            0.0 <= self.batchnorm_momentum < 1.0,
            f"{where}.batchnorm_momentum",
            f"must lie in [0, 1); got {self.batchnorm_momentum}",
        )
        require(
            self.compute_dtype in ("float32", "bfloat16"),
            f"{where}.compute_dtype",
            f"must be 'float32' or 'bfloat16'; got {self.compute_dtype!r}",
        )

    @property
    def dtype(self):
        return jnp.dtype(self.compute_dtype)


class TemporalFilter(nnx.Module):
    """A Dense over each channel's features, shared by channels; per-channel BatchNorm; ReLU.

    Public interface: input [B, C, F_in] (or [B, W, C] for the first filter, see
    `time_major_input`), output [B, C, F_out]. Inside the backbone the filters run
    feature-major (`feature_major`): [F_in, B, C] → [F_out, B, C] (or [B, F_out, C]), so each
    Dense is one GEMM [F_out, F_in] × [F_in, B·C] and channels stay minor throughout.

    The parameters live in `dense` (nnx.Linear) and `norm` (nnx.BatchNorm: scale, bias and the
    running mean/var, updated as nnx.BatchNorm does). The computation is not nnx.BatchNorm's:
    in training mode bias + BatchNorm + ReLU is one custom-VJP function (`bias_norm_relu`)
    that touches the [F, B, C] activations in as few memory passes as we could find (see there);
    in eval mode it is the affine map of the running statistics.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_channels: int,
        config: ModelConfig,
        *,
        time_major_input: bool,
        rngs: nnx.Rngs,
    ):
        self.time_major_input = time_major_input
        self.dtype = config.dtype
        self.dense = nnx.Linear(in_features, out_features, dtype=self.dtype, rngs=rngs)
        # Holds one scale/shift and running mean/var per channel (normalised over (F, B)).
        self.norm = nnx.BatchNorm(
            num_channels,
            axis=-1,
            momentum=config.batchnorm_momentum,
            epsilon=config.batchnorm_epsilon,
            dtype=self.dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.time_major_input:  # x_BxWxC
            x_KxBxC = jnp.transpose(x, (1, 0, 2))
        else:  # x_BxCxF
            x_KxBxC = jnp.transpose(x, (2, 0, 1))
        return jnp.transpose(self.feature_major(x_KxBxC), (1, 2, 0))

    def feature_major(
        self, x_KxBxC: jax.Array, *, batch_major_output: bool = False, native_gradient: bool = False
    ) -> jax.Array:
        """[K, B, C] → relu(norm(dense(x))): [F, B, C], or [B, F, C] if batch_major_output.
        native_gradient: the kernel's gradient by the native CPU kernel (`contract_leading_native`;
        one CPU device, float32)."""
        kernel = self.dense.kernel[...].astype(self.dtype)
        contract = contract_leading_native if native_gradient else contract_leading
        h_FxBxC = contract(kernel, x_KxBxC.astype(self.dtype))  # without the bias
        return self.bias_norm_relu(h_FxBxC, batch_major_output=batch_major_output)

    def from_rows(self, rows_RxC: jax.Array, starts_B: jax.Array, row_stride: int) -> jax.Array:
        """`feature_major` of windows given as row indices (window b's sample w is
        rows[starts[b] + w·row_stride]), computed by the native CPU kernel without gathering
        them (esort_jax.fast.native.window_dense; float32): [F, B, C]. First filter only."""
        kernel = self.dense.kernel[...].astype(jnp.float32)
        h_FxBxC = native.window_dense(rows_RxC, starts_B, kernel, int(kernel.shape[0]), int(row_stride))
        return self.bias_norm_relu(h_FxBxC)

    def bias_norm_relu(self, h_FxBxC: jax.Array, *, batch_major_output: bool = False) -> jax.Array:
        """relu(norm(h + bias)) of the Dense output without its bias: [F, B, C] (or [B, F, C])."""
        bias = self.dense.bias[...].astype(jnp.float32)
        norm = self.norm
        scale, shift = norm.scale[...].astype(jnp.float32), norm.bias[...].astype(jnp.float32)
        eps = float(norm.epsilon)
        if norm.use_running_average:
            mul = scale * jax.lax.rsqrt(norm.var[...] + eps)
            add = shift - norm.mean[...] * mul
            y = jax.nn.relu((h_FxBxC + bias[:, None, None]) * mul[None, None] + add[None, None])
            y = jnp.transpose(y, (1, 0, 2)) if batch_major_output else y
        else:
            y, mean, var = bias_norm_relu(h_FxBxC, bias, scale, shift, eps, batch_major_output)
            m = norm.momentum
            norm.mean[...] = jax.lax.stop_gradient(m * norm.mean[...] + (1 - m) * mean)
            norm.var[...] = jax.lax.stop_gradient(m * norm.var[...] + (1 - m) * var)
        return y.astype(self.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def bias_norm_relu(h_FxBxC, bias_F, scale_C, shift_C, eps, batch_major_output):
    """Training-mode relu(BatchNorm_C(h + bias)) with batch statistics over (F, B).

    Returns (y, mean_C, var_C): y [F, B, C] ([B, F, C] if batch_major_output), and the batch
    mean and (biased) variance for the running averages. The variance is the one-pass
    E[x²] - E[x]² (as nnx.BatchNorm's default `use_fast_variance`).

    The autodiff of the plain formula made XLA:CPU sweep the [F, B, C] activations ~10 times
    per layer (separate reductions for every mean, centred copies, the backward's sums, the
    bias gradient). Here the forward reads h for the per-(f, c) batch sums of h and h², then
    once more to write y; the backward reads (dy, h) for the per-(f, c) sums of g and g·x̂ (g
    the gradient behind the ReLU), then once more to write dh. The gradients of the
    per-channel scale and shift, and of the per-feature Dense bias, follow from those [F, C]
    sums alone.
    """
    return _bnr_forward(h_FxBxC, bias_F, scale_C, shift_C, eps, batch_major_output)[0]


def _bnr_forward(h, bias, scale, shift, eps, batch_major_output):
    f, b, _ = h.shape
    n = f * b
    h32 = h.astype(jnp.float32)
    # The barrier keeps XLA from merging these [F, C] sums with the later sums over F into
    # reductions over the big tensor (which it would then also run again in the backward).
    hsum_FxC, hsumsq_FxC = jax.lax.optimization_barrier((jnp.sum(h32, axis=1), jnp.sum(h32 * h32, axis=1)))
    bias_FxC = jnp.broadcast_to(bias[:, None], hsum_FxC.shape)
    # x = h + bias: Σ_b x = Σ_b h + B·bias, Σ_b x² = Σ_b h² + 2·bias·Σ_b h + B·bias²
    mean = jnp.sum(hsum_FxC + b * bias_FxC, axis=0) / n
    meansq = jnp.sum(hsumsq_FxC + 2.0 * bias_FxC * hsum_FxC + b * bias_FxC * bias_FxC, axis=0) / n
    var = jnp.maximum(meansq - mean * mean, 0.0)
    rstd = jax.lax.rsqrt(var + eps)
    mul = scale * rstd
    z = (h32 + bias[:, None, None] - mean[None, None, :]) * mul[None, None] + shift[None, None]
    if batch_major_output:
        z = jnp.transpose(z, (1, 0, 2))
    y = jax.nn.relu(z)
    residuals = (h, bias, scale, shift, mean, rstd, hsum_FxC)
    return (y, mean, var), residuals


def _bnr_fwd(h, bias, scale, shift, eps, batch_major_output):
    return _bnr_forward(h, bias, scale, shift, eps, batch_major_output)


def _bnr_bwd(eps, batch_major_output, residuals, cotangents):
    h, bias, scale, shift, mean, rstd, hsum_FxC = residuals
    dy = cotangents[0]  # the mean/var outputs only feed running averages (no gradient)
    if batch_major_output:
        dy = jnp.transpose(dy, (1, 0, 2))
    f, b, _ = h.shape
    n = f * b
    h32 = h.astype(jnp.float32)
    centre_FxC = bias[:, None] - mean[None, :]  # x - mean = h + (bias_f - mean_c)
    mul = scale * rstd
    # The ReLU's mask from h directly (z = x̂·scale + shift); x̂ itself is never materialised:
    # Σ_b g·x̂ = rstd · (Σ_b g·h + (bias_f - mean_c) · Σ_b g).
    z = (h32 + centre_FxC[:, None, :]) * mul[None, None] + shift[None, None]
    g = jnp.where(z > 0, dy.astype(jnp.float32), 0.0)
    g_sum_FxC, gh_sum_FxC = jax.lax.optimization_barrier((jnp.sum(g, axis=1), jnp.sum(g * h32, axis=1)))
    gx_sum_FxC = rstd[None] * (gh_sum_FxC + centre_FxC * g_sum_FxC)
    d_shift = jnp.sum(g_sum_FxC, axis=0)  # [C]
    d_scale = jnp.sum(gx_sum_FxC, axis=0)
    xhat = (h32 + centre_FxC[:, None, :]) * rstd[None, None]
    dh = mul[None, None] * (g - (d_shift / n)[None, None] - xhat * (d_scale / n)[None, None])
    # Σ_{b,c} dh[f, b, c] from [F, C] sums, with Σ_b x̂[f, b, c] = rstd (Σ_b h + B (bias_f - mean_c)).
    xhat_sum_FxC = rstd[None] * (hsum_FxC + b * centre_FxC)
    d_bias = jnp.sum(mul[None] * (g_sum_FxC - (b * d_shift / n)[None] - xhat_sum_FxC * (d_scale / n)[None]), axis=1)
    return dh.astype(h.dtype), d_bias, d_scale, d_shift


bias_norm_relu.defvjp(_bnr_fwd, _bnr_bwd)


@jax.custom_vjp
def contract_leading(kernel_KxF: jax.Array, x_KxBxC: jax.Array) -> jax.Array:
    """h[f, b, c] = sum_k kernel[k, f] x[k, b, c], as one GEMM [F, K] x [K, B·C].

    Same as jnp.einsum("kf,kbc->fbc"); the custom VJP writes the weight gradient as one GEMM
    contracting the long B·C axis of both operands in place (autodiff of the einsum made XLA
    copy the [K, B·C] input into a transposed layout first)."""
    k, b, c = x_KxBxC.shape
    return (kernel_KxF.T @ x_KxBxC.reshape(k, b * c)).reshape(-1, b, c)


def _contract_leading_fwd(kernel_KxF, x_KxBxC):
    return contract_leading(kernel_KxF, x_KxBxC), (kernel_KxF, x_KxBxC)


def _contract_leading_bwd(residuals, g_FxBxC):
    kernel_KxF, x_KxBxC = residuals
    k, b, c = x_KxBxC.shape
    g_FxN = g_FxBxC.reshape(-1, b * c)
    d_kernel = jax.lax.dot_general(x_KxBxC.reshape(k, b * c), g_FxN, (((1,), (1,)), ((), ())))
    d_x = (kernel_KxF @ g_FxN).reshape(k, b, c)  # dead code (removed by XLA) when x needs no gradient
    return d_kernel.astype(kernel_KxF.dtype), d_x.astype(x_KxBxC.dtype)


contract_leading.defvjp(_contract_leading_fwd, _contract_leading_bwd)


@jax.custom_vjp
def contract_leading_native(kernel_KxF: jax.Array, x_KxBxC: jax.Array) -> jax.Array:
    """`contract_leading` whose weight gradient (a [K, B·C] × [F, B·C]ᵀ product with tiny
    output, which XLA:CPU runs on one thread) is the native CPU kernel
    `esort_jax.fast.native.contract_long` (float32, one CPU device)."""
    return contract_leading(kernel_KxF, x_KxBxC)


def _contract_leading_native_bwd(residuals, g_FxBxC):
    kernel_KxF, x_KxBxC = residuals
    k, b, c = x_KxBxC.shape
    g_FxN = g_FxBxC.reshape(-1, b * c)
    d_kernel = native.contract_long(x_KxBxC.reshape(k, b * c), g_FxN)
    d_x = (kernel_KxF @ g_FxN).reshape(k, b, c)
    return d_kernel.astype(kernel_KxF.dtype), d_x.astype(x_KxBxC.dtype)


contract_leading_native.defvjp(_contract_leading_fwd, _contract_leading_native_bwd)


class SpatialDense(nnx.Module):
    """Dense [B, K] → [B, S] whose kernel is stored transposed, [S, K] (`kernel`, `bias` [S]).

    Stored as the training step's gradient GEMM produces it (gᵀ x, [S, B] × [B, K]), so the
    optimiser updates it in place: with the usual [K, S] layout XLA fused the transpose into
    Adam's elementwise updates, which then read the 6 MB gradient column by column. The
    forward product contracts the kernel's minor axis (an NT GEMM, as fast as NN here).
    Initialised like nnx.Linear: LeCun normal over the K inputs, zero bias.
    """

    def __init__(self, in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal(in_axis=1, out_axis=0)
        self.kernel = nnx.Param(init(rngs.params(), (out_features, in_features), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
        self.dtype = dtype

    def __call__(self, x_BxK: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(self.dtype)
        return matmul_nt(x_BxK.astype(self.dtype), kernel) + self.bias[...].astype(self.dtype)[None, :]


@jax.custom_vjp
def matmul_nt(x_BxK: jax.Array, kernel_SxK: jax.Array) -> jax.Array:
    """x @ kernelᵀ: [B, K] × [S, K] → [B, S], with both backward products plain GEMMs.

    d_x = g @ kernel ([B, S] × [S, K]); d_kernel = gᵀ @ x ([S, B] × [B, K]) with gᵀ
    materialised (a small [S, B] copy; the barrier keeps XLA from folding it back into the
    product, which it would then run as a slower transposed-operand GEMM)."""
    return jax.lax.dot_general(x_BxK, kernel_SxK, (((1,), (1,)), ((), ())))


def _matmul_nt_fwd(x_BxK, kernel_SxK):
    return matmul_nt(x_BxK, kernel_SxK), (x_BxK, kernel_SxK)


def _matmul_nt_bwd(residuals, g_BxS):
    x_BxK, kernel_SxK = residuals
    g_SxB = jax.lax.optimization_barrier(g_BxS.T)
    return g_BxS @ kernel_SxK, g_SxB @ x_BxK


matmul_nt.defvjp(_matmul_nt_fwd, _matmul_nt_bwd)


class SpatialFilter(nnx.Module):
    """Flatten [B, F, C] feature-major → Dense → S, BatchNorm(S), ReLU.

    `dense.kernel` is [S, F·C]; column f·C + c weighs feature f of channel c. That is the
    order the temporal filters produce ([B, F2, C] → [B, F2·C] is a free reshape), so neither
    the kernel nor its gradient is ever permuted.
    """

    def __init__(self, num_channels: int, in_features: int, config: ModelConfig, *, rngs: nnx.Rngs):
        self.dense = SpatialDense(num_channels * in_features, config.spatial_features, dtype=config.dtype, rngs=rngs)
        self.norm = nnx.BatchNorm(
            config.spatial_features,
            momentum=config.batchnorm_momentum,
            epsilon=config.batchnorm_epsilon,
            dtype=config.dtype,
            rngs=rngs,
        )

    def __call__(self, h_BxCxF: jax.Array) -> jax.Array:
        batch, channels, features = h_BxCxF.shape
        return self.flat(jnp.transpose(h_BxCxF, (0, 2, 1)).reshape(batch, features * channels))

    def flat(self, flat_BxFC: jax.Array) -> jax.Array:
        """Dense + BatchNorm + ReLU of already flattened (feature-major) inputs [B, F·C]."""
        return nnx.relu(self.norm(self.dense(flat_BxFC)))


class Backbone(nnx.Module):
    """Layers 1–3: everything but the per-unit head."""

    def __init__(self, num_channels: int, config: ModelConfig, *, rngs: nnx.Rngs):
        f1, f2 = config.temporal_features
        self.temporal1 = TemporalFilter(
            config.window, f1, num_channels, config, time_major_input=True, rngs=rngs
        )
        self.temporal2 = TemporalFilter(f1, f2, num_channels, config, time_major_input=False, rngs=rngs)
        self.spatial = SpatialFilter(num_channels, f2, config, rngs=rngs)

    def __call__(self, x_BxWxC: jax.Array) -> jax.Array:
        batch, _, channels = x_BxWxC.shape
        # Feature-major inside: [W, B, C] → [F1, B, C] → [B, F2, C] → [B, F2·C] (no transposes
        # but the first, which cancels against the training step's own; see train._update).
        a1_FxBxC = self.temporal1.feature_major(jnp.transpose(x_BxWxC, (1, 0, 2)))
        return self._after_temporal1(a1_FxBxC)

    def from_rows(self, rows_RxC: jax.Array, starts_B: jax.Array, row_stride: int = 1) -> jax.Array:
        """The backbone on windows given as row indices into rows [R, C] (see
        `TemporalFilter.from_rows`; native CPU kernel, float32)."""
        a1_FxBxC = self.temporal1.from_rows(rows_RxC, starts_B, row_stride)
        return self._after_temporal1(a1_FxBxC, native_gradient=True)

    def _after_temporal1(self, a1_FxBxC: jax.Array, native_gradient: bool = False) -> jax.Array:
        batch = a1_FxBxC.shape[1]
        a2_BxFxC = self.temporal2.feature_major(
            a1_FxBxC, batch_major_output=True, native_gradient=native_gradient
        )
        return self.spatial.flat(a2_BxFxC.reshape(batch, -1))


class ESortNet(nnx.Module):
    """Windows [B, W, C] → per-unit logits [B, N]."""

    def __init__(self, num_channels: int, num_units: int, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.num_channels = num_channels
        self.num_units = num_units
        self.backbone = Backbone(num_channels, config, rngs=rngs)
        self.head = nnx.Linear(config.spatial_features, num_units, dtype=config.dtype, rngs=rngs)

    def __call__(self, x_BxWxC: jax.Array) -> jax.Array:
        expected = (self.config.window, self.num_channels)
        if tuple(x_BxWxC.shape[1:]) != expected:
            raise ValueError(
                f"ESortNet expects windows [batch, {expected[0]}, {expected[1]}] (time, channels); "
                f"got {tuple(x_BxWxC.shape)}"
            )
        return self.head(self.backbone(x_BxWxC)).astype(jnp.float32)

    def logits_from_rows(self, rows_RxC: jax.Array, starts_B: jax.Array, row_stride: int = 1) -> jax.Array:
        """Logits [B, N] of the windows whose sample w is rows[starts[b] + w·row_stride]
        (e.g. the resident traces and the window starts), without materialising them: layer
        1 runs in the native CPU kernel (esort_jax.fast.native.window_dense; float32, CPU only).
        The training step uses this on CPU; it equals `self(windows)` up to rounding."""
        if rows_RxC.ndim != 2 or rows_RxC.shape[1] != self.num_channels:
            raise ValueError(
                f"ESortNet expects rows [R, {self.num_channels}] (time, channels); got {tuple(rows_RxC.shape)}"
            )
        return self.head(self.backbone.from_rows(rows_RxC, starts_B, row_stride)).astype(jnp.float32)


def window_flops(num_channels: int, num_units: int, config: ModelConfig) -> int:
    """Multiply-add FLOPs (2 per MAC) of one forward pass on one window (dense layers only)."""
    f1, f2 = config.temporal_features
    macs = (
        num_channels * config.window * f1
        + num_channels * f1 * f2
        + num_channels * f2 * config.spatial_features
        + config.spatial_features * num_units
    )
    return 2 * macs

