"""The E-Sort network (Flax NNX): shared temporal filters, a spatial filter, a per-unit head.

Per window x [W, C] (W samples of C channels, time-major like the recording):

  backbone.temporal1   Dense W→F1 on each channel's W samples, weights shared by all channels;
                       BatchNorm over channels (one scale/shift per channel); ReLU      → [C, F1]
  backbone.temporal2   Dense F1→F2 shared by channels; per-channel BatchNorm; ReLU        → [C, F2]
  backbone.spatial     flatten (channel-major) [C·F2] → Dense → S; BatchNorm(S); ReLU      → [S]
  head                 Dense S → N units (logits; sigmoid gives per-unit probabilities)

Paper sizes: W=60, F1=8, F2=16, S=256. Parameters that depend on the channel count C
(`*.norm` of the temporal filters, `spatial.dense`) or on the unit count N (`head`) sit in
their own named layers, so transfer can restore by name (see esort_jax.transfer).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from esort_jax.config import require

__all__ = ["ModelConfig", "TemporalFilter", "SpatialFilter", "Backbone", "ESortNet", "window_flops", "contract_leading", "matmul"]


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

    Input [B, C, F_in] (or [B, W, C] for the first filter, see `time_major_input`);
    output [B, C, F_out].
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
        # Normalises [F, B, C] activations over (F, B), one scale/shift per channel (C last).
        self.norm = nnx.BatchNorm(
            num_channels,
            axis=-1,
            momentum=config.batchnorm_momentum,
            epsilon=config.batchnorm_epsilon,
            dtype=self.dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        # Computed feature-major, [F, B, C]: each Dense is then one GEMM [F_out, F_in] x
        # [F_in, B·C] and the per-channel statistics reduce over leading axes. The transposes at
        # the boundaries keep the [B, ·, C] interface; inside a jit they cancel between layers
        # (and the first one folds into the gather that cut the windows).
        kernel = self.dense.kernel[...].astype(self.dtype)
        bias = self.dense.bias[...].astype(self.dtype)
        if self.time_major_input:  # x_BxWxC
            x_KxBxC = jnp.transpose(x.astype(self.dtype), (1, 0, 2))
        else:  # x_BxCxF
            x_KxBxC = jnp.transpose(x.astype(self.dtype), (2, 0, 1))
        h_FxBxC = contract_leading(kernel, x_KxBxC) + bias[:, None, None]
        y_FxBxC = nnx.relu(self.norm(h_FxBxC))
        return jnp.transpose(y_FxBxC, (1, 2, 0))


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


class SpatialFilter(nnx.Module):
    """Flatten [B, C, F] channel-major → Dense → S, BatchNorm(S), ReLU."""

    def __init__(self, num_channels: int, in_features: int, config: ModelConfig, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(
            num_channels * in_features, config.spatial_features, dtype=config.dtype, rngs=rngs
        )
        self.norm = nnx.BatchNorm(
            config.spatial_features,
            momentum=config.batchnorm_momentum,
            epsilon=config.batchnorm_epsilon,
            dtype=config.dtype,
            rngs=rngs,
        )

    def __call__(self, h_BxCxF: jax.Array) -> jax.Array:
        # Flattened feature-major ([B, F·C], a row permutation of the temporal filter's [F, B, C]
        # output) against the kernel's rows permuted to match: the same as flattening
        # channel-major [B, C·F] against the kernel as stored.
        batch, channels, features = h_BxCxF.shape
        flat_BxFC = jnp.transpose(h_BxCxF, (0, 2, 1)).reshape(batch, features * channels)
        kernel = self.dense.kernel[...].astype(self.dense.dtype)
        kernel_FCxS = jnp.transpose(kernel.reshape(channels, features, -1), (1, 0, 2)).reshape(features * channels, -1)
        bias = self.dense.bias[...].astype(self.dense.dtype)
        z_BxS = matmul(flat_BxFC.astype(self.dense.dtype), kernel_FCxS) + bias[None, :]
        return nnx.relu(self.norm(z_BxS))


@jax.custom_vjp
def matmul(x_BxK: jax.Array, kernel_KxS: jax.Array) -> jax.Array:
    """x @ kernel, with a weight gradient XLA:CPU runs as a plain GEMM.

    Autodiff gives d_kernel = xᵀ g, a product contracting the leading axis of both operands,
    which XLA:CPU hands to a generic kernel at ~2/3 of the matmul rate. Here d_kernelᵀ = gᵀ x
    with gᵀ materialised (a small [S, B] copy) is an ordinary GEMM; the [S, K] result is
    transposed back (a small copy). Optimisation barriers keep XLA from folding the two
    transposes back into the product."""
    return x_BxK @ kernel_KxS


def _matmul_fwd(x_BxK, kernel_KxS):
    return x_BxK @ kernel_KxS, (x_BxK, kernel_KxS)


def _matmul_bwd(residuals, g_BxS):
    x_BxK, kernel_KxS = residuals
    g_SxB = jax.lax.optimization_barrier(g_BxS.T)
    d_kernel_SxK = jax.lax.optimization_barrier(g_SxB @ x_BxK)
    return g_BxS @ kernel_KxS.T, d_kernel_SxK.T


matmul.defvjp(_matmul_fwd, _matmul_bwd)


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
        return self.spatial(self.temporal2(self.temporal1(x_BxWxC)))


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
