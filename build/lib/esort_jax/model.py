"""The E-Sort network (Flax NNX): shared temporal filters, a spatial filter, a per-unit head.

Per window x [W, C] (W samples of C channels, time-major like the recording):

  backbone.temporal1   Dense W→F1 on each channel's W samples, weights shared by all channels;
                       BatchNorm over channels (one scale/shift per channel); ReLU      → [F1, C]
  backbone.temporal2   Dense F1→F2 shared by channels; per-channel BatchNorm; ReLU        → [F2, C]
  backbone.spatial     flatten [F2·C] (feature f of channel c at f·C + c) → Dense → S;
                       BatchNorm(S); ReLU                                                 → [S]
  head                 Dense S → N units (logits; sigmoid gives per-unit probabilities)

Paper sizes: W=60, F1=8, F2=16, S=256. Parameters that depend on the channel count C
(`*.norm` of the temporal filters, `spatial.dense`) or on the unit count N (`head`) sit in
their own named layers, so transfer can restore by name (see esort_jax.transfer).

Shapes as stored: temporal*.dense.kernel [F_in, F_out] (nnx.Linear), *.norm scale/bias/mean/var
[C] (or [S]), spatial.dense.kernel [S, F2·C] (column f·C + c: feature f of channel c; stored
transposed, see SpatialDense), head.kernel [S, N].

This module is the reference: a plain forward of jnp operations, every BatchNorm an
nnx.BatchNorm (batch statistics and running-average updates in train mode, the running averages
in eval mode). Activations keep channels last, [B, F, C], so a BatchNorm over channels is
nnx.BatchNorm(axis=-1) and the flattening before the spatial layer is a free reshape. The
training step and inference compute the same network faster (esort_jax.fast); the tests compare
them with this forward.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from esort_jax.config import require

__all__ = [
    "ModelConfig", "TemporalFilter", "SpatialDense", "SpatialFilter", "Backbone", "ESortNet", "window_flops",
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
    """Dense over each channel's K inputs, weights shared by all channels; BatchNorm over
    channels (one scale/shift and running mean/var per channel, statistics over batch and
    features); ReLU: [B, K, C] → [B, F, C]. The first filter takes the windows [B, W, C] as
    they are (K = W)."""

    def __init__(self, in_features: int, out_features: int, num_channels: int, config: ModelConfig, *,
                 rngs: nnx.Rngs):
        self.dtype = config.dtype
        self.dense = nnx.Linear(in_features, out_features, dtype=self.dtype, rngs=rngs)
        self.norm = nnx.BatchNorm(
            num_channels,
            axis=-1,
            momentum=config.batchnorm_momentum,
            epsilon=config.batchnorm_epsilon,
            dtype=self.dtype,
            rngs=rngs,
        )

    def __call__(self, x_BxKxC: jax.Array) -> jax.Array:
        kernel_KxF = self.dense.kernel[...].astype(self.dtype)
        bias_F = self.dense.bias[...].astype(self.dtype)
        h_BxFxC = jnp.einsum("bkc,kf->bfc", x_BxKxC.astype(self.dtype), kernel_KxF) + bias_F[None, :, None]
        return nnx.relu(self.norm(h_BxFxC))


class SpatialDense(nnx.Module):
    """Dense [B, K] → [B, S] whose kernel is stored transposed, [S, K] (`kernel`, `bias` [S]).

    Stored as the training step's gradient GEMM produces it (gᵀ x, [S, B] × [B, K]), so the
    optimiser updates it in place (esort_jax.fast.training). Initialised like nnx.Linear: LeCun
    normal over the K inputs, zero bias.
    """

    def __init__(self, in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal(in_axis=1, out_axis=0)
        self.kernel = nnx.Param(init(rngs.params(), (out_features, in_features), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
        self.dtype = dtype

    def __call__(self, x_BxK: jax.Array) -> jax.Array:
        kernel_SxK = self.kernel[...].astype(self.dtype)
        return x_BxK.astype(self.dtype) @ kernel_SxK.T + self.bias[...].astype(self.dtype)[None, :]


class SpatialFilter(nnx.Module):
    """Flatten [B, F, C] → [B, F·C] (column f·C + c: feature f of channel c) → Dense → S,
    BatchNorm(S), ReLU."""

    def __init__(self, num_channels: int, in_features: int, config: ModelConfig, *, rngs: nnx.Rngs):
        self.dense = SpatialDense(
            num_channels * in_features, config.spatial_features, dtype=config.dtype, rngs=rngs
        )
        self.norm = nnx.BatchNorm(
            config.spatial_features,
            momentum=config.batchnorm_momentum,
            epsilon=config.batchnorm_epsilon,
            dtype=config.dtype,
            rngs=rngs,
        )

    def __call__(self, h_BxFxC: jax.Array) -> jax.Array:
        batch, features, channels = h_BxFxC.shape
        return nnx.relu(self.norm(self.dense(h_BxFxC.reshape(batch, features * channels))))


class Backbone(nnx.Module):
    """Layers 1–3: everything but the per-unit head. Windows [B, W, C] → [B, S]."""

    def __init__(self, num_channels: int, config: ModelConfig, *, rngs: nnx.Rngs):
        f1, f2 = config.temporal_features
        self.temporal1 = TemporalFilter(config.window, f1, num_channels, config, rngs=rngs)
        self.temporal2 = TemporalFilter(f1, f2, num_channels, config, rngs=rngs)
        self.spatial = SpatialFilter(num_channels, f2, config, rngs=rngs)

    def __call__(self, x_BxWxC: jax.Array) -> jax.Array:
        return self.spatial(self.temporal2(self.temporal1(x_BxWxC)))


class ESortNet(nnx.Module):
    """Windows [B, W, C] → per-unit logits [B, N] (float32)."""

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

