"""What the online sorter takes from the offline core, in one place.

The online path must compute the SAME numbers as `esort_jax.sort.sort_recording`: the network
in convolution form (the kernel arrays and block functions of `esort_jax.infer`), the smoothing
expression of `esort_jax.postprocess`, the folded parameters and checkpoints. Every import of
those internals goes through this module, so when they move (the convolution-form kernels are
moving to `esort_jax.fast`) only the lines below change.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

from esort_jax.fast import conv as _conv
from esort_jax.checkpoint import CheckpointError, CheckpointMetadata, load_model
from esort_jax.infer import InferenceConfig, InferenceParams, fold_batchnorm, predict_probabilities
from esort_jax.postprocess import PostprocessConfig, smooth, smooth_valid
from esort_jax.sort import SORTING_DEFAULTS, sort_recording

__all__ = [
    "CheckpointError", "CheckpointMetadata", "InferenceConfig", "InferenceParams", "PostprocessConfig",
    "block_logits", "kernel_arrays", "load_checkpoint", "predict_probabilities", "resolve_kernel",
    "smooth", "smooth_valid", "sort_recording",
]


def resolve_kernel(params: InferenceParams, config: InferenceConfig) -> InferenceConfig:
    """`config` with kernel 'xla' or 'native': what the offline sort picks for these params."""
    return config.resolve_kernel(params)


def kernel_arrays(params: InferenceParams, config: InferenceConfig) -> dict:
    """The folded parameters laid out for the block kernels (computed once, not per call)."""
    return _conv._kernel_arrays(params, config.segment, jnp.dtype(config.compute_dtype))


def block_logits(arrays: dict, rows_RxC: jax.Array, *, window: int, config: InferenceConfig) -> jax.Array:
    """Logits [S, N] of the S = R - W + 1 windows of rows [R, C]: `fast.conv.conv_logits` with the
    kernel arrays prepared beforehand. S <= config.block_steps is one block of S steps; larger S
    must be a multiple of block_steps (blocks of the offline shape, mapped in order)."""
    steps = rows_RxC.shape[0] - window + 1
    block = min(steps, config.block_steps)
    if steps % block:
        raise ValueError(f"{steps} steps are not a multiple of block_steps={config.block_steps}")
    dt = jnp.dtype(config.compute_dtype)

    def one_block(rows):
        if config.kernel == "native":
            return _conv._native_block_logits(arrays, rows)
        return _conv._block_logits(arrays, rows, block, config.segment, dt)

    if steps == block:
        return one_block(rows_RxC)
    starts = jnp.arange(steps // block) * block
    logits = lax.map(lambda b: one_block(lax.dynamic_slice_in_dim(rows_RxC, b, block + window - 1)), starts)
    return logits.reshape(steps, -1)


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedCheckpoint:
    """A network ready for sorting: folded parameters, metadata and the saved threshold."""

    params: InferenceParams
    metadata: CheckpointMetadata
    threshold: float | None  # chosen on the training region (sorting_defaults.json), if saved


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Fold a saved network for inference and read the threshold saved beside it."""
    model, metadata = load_model(path)
    model.eval()
    defaults = Path(path) / SORTING_DEFAULTS
    threshold = json.loads(defaults.read_text())["threshold"] if defaults.is_file() else None
    return LoadedCheckpoint(fold_batchnorm(model), metadata, threshold)
