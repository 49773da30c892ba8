"""Native CPU kernels, called from jitted JAX code through XLA's FFI.

- `temporal_layers` (temporal_layers.cc): the network's two temporal layers fused, for
  convolution-form inference on CPU (esort_jax.fast.conv, `InferenceConfig.kernel`). XLA:CPU
  computes those layers as two matrix products with the BatchNorm/ReLU passes between them
  going through memory: ~35% of inference time at 384 channels on the 2-core CPU this
  project is developed on; the fused kernel made inference 1.33× faster
  (experiments/benchmark.py, README).
- `window_dense` (window_dense.cc): layer 1 in training, on windows given as row indices
  into the resident traces instead of a gathered [W, B, C] copy, with its weight gradient
  (a custom VJP), which the training step uses on CPU (esort_jax.fast.training,
  `TrainConfig.kernel`).
- `contract_long` (long_contraction.cc): a [F, N] · b [K, N]ᵀ for long N, the weight gradient
  of layer 2 in the same training path (XLA:CPU ran it on one thread).

The C++ sources (next to this file) are compiled on first use with the
system C++ compiler (`$CXX`, default `g++`; `-O3 -march=native`, the headers come with
jaxlib) into a per-user cache: `$ESORT_JAX_NATIVE_CACHE`, else
`$XDG_CACHE_HOME/esort_jax/native`, else `~/.cache/esort_jax/native`. The library's name is a
hash of everything that goes into it (source, compiler, flags, jaxlib headers, CPU flags),
so an edit or another machine sharing the cache gets its own build; it is written to a
temporary name and renamed, so concurrent first uses are safe. Without a compiler the
library is unavailable and esort_jax.fast.choose_kernel falls back to the XLA path
(`unavailable_reason()` says why).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "SUPPORTED_FEATURES",
    "WINDOW_DENSE_FEATURES",
    "window_dense",
    "contract_long",
    "library_path",
    "supports",
    "temporal_layers",
    "unavailable_reason",
]

HERE = Path(__file__).parent
SOURCES = (HERE / "temporal_layers.cc", HERE / "window_dense.cc", HERE / "long_contraction.cc")
HEADERS = (HERE / "simd.h",)
TARGETS = {  # FFI target name → exported symbol
    "esort_temporal_layers": "EsortTemporalLayers",
    "esort_window_dense": "EsortWindowDense",
    "esort_window_dense_grad": "EsortWindowDenseGrad",
    "esort_long_contraction": "EsortLongContraction",
}
WINDOW_DENSE_FEATURES = frozenset({2, 4, 8, 16})
# (F1, F2) pairs with a compiled kernel: keep in sync with kernel_for() in the source.
SUPPORTED_FEATURES = frozenset({(2, 4), (4, 8), (4, 16), (8, 8), (8, 16), (8, 32), (16, 16), (16, 32)})
CXX_FLAGS = (
    "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden",
    "-Wno-attributes", "-Wno-return-type",
)


class NativeBuildError(RuntimeError):
    """The native library could not be compiled or loaded (the message says why)."""


def _cache_dir() -> Path:
    if os.environ.get("ESORT_JAX_NATIVE_CACHE"):
        return Path(os.environ["ESORT_JAX_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "esort_jax" / "native"


def _compiler() -> str:
    cxx = os.environ.get("CXX", "g++")
    path = shutil.which(cxx)
    if path is None:
        raise NativeBuildError(f"no C++ compiler: {cxx!r} (from $CXX, default g++) is not on PATH")
    return path


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def library_path() -> Path:
    """Where the library for this source, compiler, jaxlib and CPU is (or will be) built."""
    cxx = _compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    header = Path(jax.ffi.include_dir(), "xla", "ffi", "api", "ffi.h")
    digest = hashlib.sha256()
    for part in (*(f.read_bytes() for f in SOURCES + HEADERS), header.read_bytes(), version.encode(), " ".join(CXX_FLAGS).encode(),
                 platform.machine().encode(), _cpu_flags().encode()):
        digest.update(part)
        digest.update(b"\0")
    return _cache_dir() / f"libesort_native-{digest.hexdigest()[:16]}.so"


def _build(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=target.parent)
    os.close(fd)
    command = [_compiler(), *CXX_FLAGS, "-I", jax.ffi.include_dir(), "-I", str(HERE),
               *(str(f) for f in SOURCES), "-o", tmp]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise NativeBuildError(
                f"compiling {', '.join(f.name for f in SOURCES)} failed ({' '.join(command)}):\n{done.stderr[-2000:]}"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.lru_cache(maxsize=None)
def _registered() -> str | None:
    """Build (once per cache), load and register the kernel; None on success, else why not."""
    try:
        target = library_path()
        if not target.exists():
            _build(target)
        library = ctypes.cdll.LoadLibrary(str(target))
        for name, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    except (NativeBuildError, OSError, AttributeError, subprocess.SubprocessError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def unavailable_reason() -> str | None:
    """None if the native kernels are built and registered (building them on first call),
    else a one-line reason (no compiler, compile error, ...)."""
    return _registered()


def supports(temporal_features: tuple[int, int]) -> bool:
    """Whether a kernel is compiled for these (F1, F2) temporal feature counts."""
    return tuple(int(f) for f in temporal_features) in SUPPORTED_FEATURES


def temporal_layers(x_RxC, k1_WxF1, scale1_C, shift1_F1xC, k2_F1xF2, scale2_C, shift2_F2xC):
    """Both temporal layers with their folded BatchNorms and ReLUs, at every output step:
    [R - W + 1, F2·C] float32 with columns (g, c) -- the spatial layer's input rows.

    out[t, g·C + c] = relu(scale2[c]·Σ_f a1[t, c, f]·k2[f, g] + shift2[g, c]),
    a1[t, c, f] = relu(scale1[c]·Σ_w x[t + w, c]·k1[w, f] + shift1[f, c]).

    CPU only (jit/lax.map/shard_map compatible; no autodiff). Raises NativeBuildError if the
    library is unavailable, ValueError for shapes or feature counts it has no kernel for.
    """
    _require_library()
    rows, channels = x_RxC.shape
    window, f1 = k1_WxF1.shape
    f2 = k2_F1xF2.shape[1]
    if not supports((f1, f2)):
        raise ValueError(
            f"no native kernel for temporal features ({f1}, {f2}); compiled for {sorted(SUPPORTED_FEATURES)}"
        )
    expected = {
        "k2": ((f1, f2), k2_F1xF2.shape), "scale1": ((channels,), scale1_C.shape),
        "shift1": ((f1, channels), shift1_F1xC.shape), "scale2": ((channels,), scale2_C.shape),
        "shift2": ((f2, channels), shift2_F2xC.shape),
    }
    for name, (want, got) in expected.items():
        if tuple(got) != want:
            raise ValueError(f"temporal_layers: {name} has shape {tuple(got)}; expected {want}")
    if rows < window:
        raise ValueError(f"temporal_layers: {rows} input rows, fewer than one window ({window})")
    out = jax.ShapeDtypeStruct((rows - window + 1, f2 * channels), jnp.float32)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return jax.ffi.ffi_call("esort_temporal_layers", out)(
        f32(x_RxC), f32(k1_WxF1), f32(scale1_C), f32(shift1_F1xC), f32(k2_F1xF2), f32(scale2_C),
        f32(shift2_F2xC),
    )


def _require_library() -> None:
    reason = _registered()
    if reason is not None:
        raise NativeBuildError(f"native kernels unavailable: {reason}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def window_dense(rows_RxC, starts_B, kernel_WxF, window: int, row_stride: int):
    """h[f, b, c] = Σ_w rows[starts[b] + w·row_stride, c] · kernel[w, f]: [F, B, C] float32.

    Layer 1 of the network on B windows of `window` samples described by row indices into
    rows [R, C] (window b's sample w is row starts[b] + w·row_stride) -- the resident traces
    with the window starts (row_stride 1), or windows cut as [W, B, C] viewed as [W·B, C]
    (starts = arange(B), row_stride B) -- without gathering them. Differentiable in `kernel`
    only (the rows are data). CPU only; every window must lie inside the rows (checked at run
    time: an error, not a clamp).
    """
    _require_library()
    rows, channels = rows_RxC.shape
    if kernel_WxF.shape[0] != window:
        raise ValueError(f"window_dense: kernel has {kernel_WxF.shape[0]} rows; window is {window}")
    features = int(kernel_WxF.shape[1])
    if features not in WINDOW_DENSE_FEATURES:
        raise ValueError(f"window_dense: no native kernel for {features} features; compiled for "
                         f"{sorted(WINDOW_DENSE_FEATURES)}")
    out = jax.ShapeDtypeStruct((features, starts_B.shape[0], channels), jnp.float32)
    return jax.ffi.ffi_call("esort_window_dense", out)(
        jnp.asarray(rows_RxC, jnp.float32), jnp.asarray(starts_B, jnp.int32),
        jnp.asarray(kernel_WxF, jnp.float32), row_stride=np.int64(row_stride),
    )


def _window_dense_fwd(rows_RxC, starts_B, kernel_WxF, window, row_stride):
    return window_dense(rows_RxC, starts_B, kernel_WxF, window, row_stride), (rows_RxC, starts_B, kernel_WxF)


def _window_dense_bwd(window, row_stride, residuals, g_FxBxC):
    rows_RxC, starts_B, kernel_WxF = residuals
    out = jax.ShapeDtypeStruct(kernel_WxF.shape, jnp.float32)
    d_kernel = jax.ffi.ffi_call("esort_window_dense_grad", out)(
        jnp.asarray(rows_RxC, jnp.float32), jnp.asarray(starts_B, jnp.int32),
        jnp.asarray(g_FxBxC, jnp.float32), row_stride=np.int64(row_stride),
    )
    # The rows are data and the starts integers: no cotangent for either.
    return jnp.zeros_like(rows_RxC), _int_zero_cotangent(starts_B), d_kernel.astype(kernel_WxF.dtype)


def _int_zero_cotangent(x):
    return np.zeros(x.shape, dtype=jax.dtypes.float0)


window_dense.defvjp(_window_dense_fwd, _window_dense_bwd)


def contract_long(a_FxN, b_KxN):
    """a · bᵀ: [F, N] × [K, N] → [F, K] float32, for long N and small F, K (one pass over both,
    on all intra-op threads; partial sums added in a fixed order). CPU only."""
    _require_library()
    if a_FxN.ndim != 2 or b_KxN.ndim != 2 or a_FxN.shape[1] != b_KxN.shape[1]:
        raise ValueError(f"contract_long: expected [F, N] and [K, N]; got {a_FxN.shape} and {b_KxN.shape}")
    out = jax.ShapeDtypeStruct((a_FxN.shape[0], b_KxN.shape[0]), jnp.float32)
    return jax.ffi.ffi_call("esort_long_contraction", out)(
        jnp.asarray(a_FxN, jnp.float32), jnp.asarray(b_KxN, jnp.float32)
    )
