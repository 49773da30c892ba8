"""esort_jax: E-Sort end-to-end neural-network spike sorting in JAX."""

__version__ = "0.1.0"

from esort_jax.recording import (  # noqa: E402
    ArrayTraces,
    Drift,
    GroundTruth,
    Recording,
    Sorting,
    TraceSource,
)

__all__ = ["ArrayTraces", "Drift", "GroundTruth", "Recording", "Sorting", "TraceSource", "__version__"]
