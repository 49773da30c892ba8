"""Fast paths of the method: the network of esort_jax.model, computed faster.

esort_jax.model is the reference: the paper's network written plainly. Everything here computes
the same numbers up to float rounding, and each path is tested against the reference:

- `training`: the training step's formulation (train and eval mode): feature-major temporal
  filters, custom VJPs with few memory passes, and optionally the native layer-1 kernel reading
  windows in place. tests/test_fast_training.py: logits, loss, gradients and BatchNorm running
  statistics against model.py's forward with autodiff, on the XLA and the native path.
- `conv`: inference in convolution form on the folded network (esort_jax.infer.fold_batchnorm):
  banded-Toeplitz products over blocks of window positions, or the native fused temporal layers.
  tests/test_fast_conv.py: against the Flax model evaluated window by window, both kernels.
- `native/`: C++ kernels for XLA:CPU through XLA's FFI, compiled on first use (window_dense and
  contract_long for training, temporal_layers for inference). tests/test_fast_native.py: each
  kernel against the plain product.

Which implementation runs is decided in one place, `choose_kernel`, from a setting ('auto',
'xla' or 'native': `train.kernel`, `infer.kernel`) and what the run has (devices, dtype, feature
counts, a C++ compiler). 'xla' runs anywhere; 'native' needs CPU devices, float32 and a
compiled kernel for the feature counts (training: also a single device); 'auto' takes 'native'
where it can run.
"""

from __future__ import annotations

import functools
import warnings
from typing import Literal, Sequence

from esort_jax.fast import native

__all__ = ["KERNELS", "choose_kernel"]

KERNELS = ("auto", "xla", "native")


def choose_kernel(
    requested: str,
    *,
    purpose: Literal["train", "infer"],
    devices: Sequence,
    compute_dtype: str,
    temporal_features: tuple[int, int],
    where: str | None = None,
) -> Literal["xla", "native"]:
    """'xla' or 'native': what `requested` ('auto', 'xla' or 'native') means for a run.

    Args:
      requested: the setting.
      purpose: 'train' (the training step's layer 1; one device) or 'infer' (the temporal
        layers of convolution-form inference; any number of devices).
      devices: the devices the run uses.
      compute_dtype: 'float32' or 'bfloat16' (the native kernels are float32).
      temporal_features: (F1, F2) of the network.
      where: the setting's config group in messages (default: `purpose`).

    Raises ValueError for an unknown setting, or for 'native' where it cannot run (the message
    says why). 'auto' without a working compiler warns once and takes 'xla'.
    """
    where = purpose if where is None else where
    if requested not in KERNELS:
        raise ValueError(f"{where}.kernel must be 'auto', 'xla' or 'native'; got {requested!r}")
    if requested == "xla":
        return "xla"
    obstacle = _obstacle(purpose, list(devices), compute_dtype, temporal_features)
    if obstacle is None:
        obstacle = native.unavailable_reason()  # compiles the kernels on first use
        if obstacle and requested == "auto":
            _warn_unavailable(obstacle, purpose)
    if obstacle and requested == "native":
        raise ValueError(f"{where}.kernel = 'native' cannot be used: {obstacle}")
    return "xla" if obstacle else "native"


def _obstacle(purpose: str, devices: list, compute_dtype: str, temporal_features) -> str | None:
    """Why the native kernel cannot run here (None if nothing but its build stands in the way)."""
    platforms = sorted({d.platform for d in devices})
    f1, f2 = (int(f) for f in temporal_features)
    if purpose == "train":
        if len(devices) != 1:
            return f"{len(devices)} devices (the native kernel runs on one; data-parallel training uses XLA)"
        if platforms != ["cpu"]:
            return f"the device is {platforms[0]} (the native kernel is CPU only)"
        if compute_dtype != "float32":
            return f"model dtype is {compute_dtype} (the native kernel is float32)"
        if f1 not in native.WINDOW_DENSE_FEATURES:
            return (f"no native kernel for {f1} first-layer features "
                    f"(compiled for {sorted(native.WINDOW_DENSE_FEATURES)})")
        return None
    if compute_dtype != "float32":
        return f"compute_dtype is {compute_dtype!r} (the native kernel is float32)"
    if platforms != ["cpu"]:
        return f"devices are {platforms} (the native kernel is CPU only)"
    if not native.supports((f1, f2)):
        return (f"no native kernel for temporal features {(f1, f2)} "
                f"(compiled for {sorted(native.SUPPORTED_FEATURES)})")
    return None


@functools.lru_cache(maxsize=None)
def _warn_unavailable(reason: str, purpose: str) -> None:
    what = "training" if purpose == "train" else "inference"
    warnings.warn(
        f"esort_jax: the native CPU kernel is unavailable ({reason}); {what} uses the XLA path "
        f"(correct, slower on CPU). Set {purpose}.kernel=xla to silence this.",
        RuntimeWarning,
        stacklevel=4,
    )
