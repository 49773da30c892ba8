"""data_gen: fast, deterministic synthesis of Neuropixels-like recordings with ground truth.

    from data_gen import SynthesisConfig, synthesize, write_synthetic
    recording, truth = synthesize(SynthesisConfig(duration_s=30, seed=1))

One seeded function per step (probes -> units -> templates -> firing -> drift -> noise),
assembled by `synthesize` into an `esort_jax.recording.Recording` whose traces are computed
lazily span by span, and a `GroundTruth`.
"""

from data_gen.config import (
    KNOWN_PROBES,
    DriftConfig,
    FiringConfig,
    NoiseConfig,
    ProbeConfig,
    SynthesisConfig,
    TemplatesConfig,
    UnitsConfig,
)
from data_gen.probes import make_probe, make_probe_from_positions, probe_from_config
from data_gen.synthesize import SyntheticTraces, resolve_config, synthesize, write_synthetic

__all__ = [
    "KNOWN_PROBES",
    "DriftConfig",
    "FiringConfig",
    "NoiseConfig",
    "ProbeConfig",
    "SynthesisConfig",
    "TemplatesConfig",
    "UnitsConfig",
    "SyntheticTraces",
    "make_probe",
    "make_probe_from_positions",
    "probe_from_config",
    "resolve_config",
    "synthesize",
    "write_synthetic",
]
