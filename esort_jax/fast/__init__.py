"""Fast paths of the method: the same numbers as `esort_jax.model`, computed faster.

`native/` holds the C++ kernels for XLA:CPU (FFI), built on first use.
"""
