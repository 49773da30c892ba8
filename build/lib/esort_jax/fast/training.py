"""The training step's formulation of ESortNet: the same network as esort_jax.model, laid out for
the step's cost on CPU.

    logits_BxN = logits(model, x_WxBxC)                          # windows, time-major
    logits_BxN = logits(model, WindowRows(traces, starts, 1))    # native layer 1 (CPU)

`model` is an ESortNet (typically merged from the train state inside the jitted step); its
parameters are read, and in train mode its BatchNorm running averages are updated as
nnx.BatchNorm does, so `nnx.state(model, nnx.BatchStat)` afterwards holds the new statistics.
In eval mode every BatchNorm uses the running averages.

Beyond the three big spatial GEMMs the step's cost is memory traffic over the [F, B, C]
activations (benchmarks/bench_train.py). So, against the plain forward of esort_jax.model:
- the temporal filters run feature-major with channels minor, [K, B, C] → [F, B, C]: each Dense
  is one GEMM [F, K] × [K, B·C] whose weight gradient contracts the long B·C axis in place
  (`contract_leading`), and the windows arrive as [W, B, C] (esort_jax.batches gathers them so);
- bias + BatchNorm + ReLU of a temporal filter is one custom-VJP function with few passes over
  its activations (`bias_norm_relu`);
- the spatial product contracts the kernel's minor axis with plain-GEMM gradients (`matmul_nt`),
  so no kernel or gradient is transposed or permuted per step;
- with `WindowRows`, layer 1 runs in the native CPU kernel (esort_jax.fast.native.window_dense),
  reading the windows in place from the rows instead of a gathered [W, B, C] copy, and layer 2's
  weight gradient in `contract_long` (`contract_leading_native`); float32, one CPU device.
tests/test_fast_training.py checks values, gradients and BatchNorm statistics of both against
the plain forward with autodiff.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from esort_jax.fast import native

__all__ = ["WindowRows", "logits", "bias_norm_relu", "contract_leading", "contract_leading_native", "matmul_nt"]


class WindowRows(NamedTuple):
    """B windows given as row indices: window b's sample w is rows[starts[b] + w·row_stride]
    (the resident traces with the window starts and stride 1, or windows [W, B, C] viewed as
    rows [W·B, C] with starts arange(B) and stride B)."""

    rows_RxC: jax.Array
    starts_B: jax.Array
    row_stride: int


def logits(model, windows) -> jax.Array:
    """Logits [B, N] float32 of an ESortNet in its current mode (see the module doc).

    windows: [W, B, C] (time-major), or `WindowRows` for the native layer-1 kernel.
    """
    backbone = model.backbone
    if isinstance(windows, WindowRows):
        if windows.rows_RxC.ndim != 2 or windows.rows_RxC.shape[1] != model.num_channels:
            raise ValueError(
                f"ESortNet expects rows [R, {model.num_channels}] (time, channels); "
                f"got {tuple(windows.rows_RxC.shape)}"
            )
        a1_FxBxC = _first_filter_from_rows(backbone.temporal1, windows)
    else:
        window, _, channels = windows.shape
        if (window, channels) != (model.config.window, model.num_channels):
            raise ValueError(
                f"ESortNet expects windows [{model.config.window}, batch, {model.num_channels}] "
                f"(time, batch, channels); got {tuple(windows.shape)}"
            )
        a1_FxBxC = _temporal_filter(backbone.temporal1, windows)
    a2_BxFxC = _temporal_filter(
        backbone.temporal2, a1_FxBxC, batch_major_output=True, native_gradient=isinstance(windows, WindowRows)
    )
    a3_BxS = _spatial_filter(backbone.spatial, a2_BxFxC.reshape(a2_BxFxC.shape[0], -1))
    return model.head(a3_BxS).astype(jnp.float32)


def _temporal_filter(layer, x_KxBxC, *, batch_major_output: bool = False, native_gradient: bool = False):
    """A TemporalFilter feature-major: [K, B, C] → relu(norm(dense(x))): [F, B, C], or [B, F, C]
    if batch_major_output. native_gradient: the kernel's gradient by the native CPU kernel."""
    kernel = layer.dense.kernel[...].astype(layer.dtype)
    contract = contract_leading_native if native_gradient else contract_leading
    h_FxBxC = contract(kernel, x_KxBxC.astype(layer.dtype))  # without the bias
    return _bias_norm_relu(layer, h_FxBxC, batch_major_output=batch_major_output)


def _first_filter_from_rows(layer, windows: WindowRows) -> jax.Array:
    """`_temporal_filter` of windows given as rows, layer 1 in the native CPU kernel: [F, B, C]."""
    kernel = layer.dense.kernel[...].astype(jnp.float32)
    h_FxBxC = native.window_dense(
        windows.rows_RxC, windows.starts_B, kernel, int(kernel.shape[0]), int(windows.row_stride)
    )
    return _bias_norm_relu(layer, h_FxBxC)


def _bias_norm_relu(layer, h_FxBxC: jax.Array, *, batch_major_output: bool = False) -> jax.Array:
    """relu(norm(h + bias)) of a TemporalFilter's Dense output without its bias: [F, B, C] (or
    [B, F, C]); in train mode the running averages are updated as nnx.BatchNorm does."""
    bias = layer.dense.bias[...].astype(jnp.float32)
    norm = layer.norm
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
    return y.astype(layer.dtype)


def _spatial_filter(layer, flat_BxFC: jax.Array) -> jax.Array:
    """A SpatialFilter on flattened (feature-major) inputs [B, F·C]: Dense (`matmul_nt`), its
    nnx.BatchNorm, ReLU."""
    dense = layer.dense
    kernel = dense.kernel[...].astype(dense.dtype)
    z_BxS = matmul_nt(flat_BxFC.astype(dense.dtype), kernel) + dense.bias[...].astype(dense.dtype)[None, :]
    return nnx.relu(layer.norm(z_BxS))


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


@jax.custom_vjp
def matmul_nt(x_BxK: jax.Array, kernel_SxK: jax.Array) -> jax.Array:
    """x @ kernelᵀ: [B, K] × [S, K] → [B, S], with both backward products plain GEMMs.

    d_x = g @ kernel ([B, S] × [S, K]); d_kernel = gᵀ @ x ([S, B] × [B, K]) with gᵀ
    materialised (a small [S, B] copy; the barrier keeps XLA from folding it back into the
    product, which it would then run as a slower transposed-operand GEMM). With the kernel's
    usual [K, S] layout XLA fused the transpose into Adam's elementwise updates, which then read
    the 6 MB gradient column by column; stored [S, K] (esort_jax.model.SpatialDense) the
    optimiser updates it in place."""
    return jax.lax.dot_general(x_BxK, kernel_SxK, (((1,), (1,)), ((), ())))


def _matmul_nt_fwd(x_BxK, kernel_SxK):
    return matmul_nt(x_BxK, kernel_SxK), (x_BxK, kernel_SxK)


def _matmul_nt_bwd(residuals, g_BxS):
    x_BxK, kernel_SxK = residuals
    g_SxB = jax.lax.optimization_barrier(g_BxS.T)
    return g_BxS @ kernel_SxK, g_SxB @ x_BxK


matmul_nt.defvjp(_matmul_nt_fwd, _matmul_nt_bwd)
