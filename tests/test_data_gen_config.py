"""data_gen configuration: defaults are valid, bad values fail with the dotted key named."""

import dataclasses

import pytest

from data_gen import SynthesisConfig, synthesize
from data_gen.config import DriftConfig, TemplatesConfig
from esort_jax.config import ConfigError, from_dict, to_dict


def _build(mapping):
    return from_dict(SynthesisConfig, mapping, "data")


def test_defaults_are_valid_and_round_trip_through_plain_dicts():
    config = _build({})
    config.validate("data")
    assert config.sampling_frequency == 32000.0 and config.noise.std_uv == 10.0
    again = _build(to_dict(config))
    assert again == config
    nested = _build({"probe": {"name": "np2", "n_channels": 16}, "units": {"z_range_um": [5, 60]}})
    assert nested.probe.n_channels == 16 and nested.units.z_range_um == (5.0, 60.0)


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"duration_s": -1}, "data.duration_s: must be > 0; got -1.0"),
        ({"duration_s": 0}, "data.duration_s: must be > 0"),
        ({"probe": {"name": "np3"}}, "data.probe.name: unknown probe 'np3'; known probes: np1, np2, dense"),
        ({"probe": {"name": "/nowhere/probe.json"}}, "data.probe.name: probe file '/nowhere/probe.json' not found"),
        ({"probe": {"n_channels": 0}}, "data.probe.n_channels: must be > 0"),
        ({"units": {"density_per_mm3": 0}}, "data.units.density_per_mm3: must be > 0"),
        ({"units": {"density_per_mm3": -5}}, "data.units.density_per_mm3: must be > 0"),
        ({"units": {"n_units": 0}}, "data.units.n_units: must be > 0"),
        ({"units": {"z_range_um": [80, 10]}}, "data.units.z_range_um: minimum must be <= maximum"),
        ({"noise": {"std_uv": -1}}, "data.noise.std_uv: must be >= 0; got -1.0"),
        (
            {"templates": {"min_amplitude_uv": 300, "max_amplitude_uv": 40}},
            "data.templates.min_amplitude_uv: must be <= max_amplitude_uv (40.0); got 300.0",
        ),
        ({"templates": {"ms_before": 0.5, "ms_after": 2.0}}, "data.templates.ms_after: templates must span >= 3 ms"),
        ({"firing": {"refractory_ms": 0}}, "data.firing.refractory_ms: must be > 0"),
        ({"firing": {"max_rate_hz": 600}}, "data.firing.max_rate_hz: must be < 1 / refractory period = 500 Hz"),
        ({"drift": {"mode": "wobbly"}}, "data.drift.mode: 'wobbly' is not one of"),
        ({"drift": {"nonrigid_modulation": 2}}, "data.drift.nonrigid_modulation: must be in [0, 1]"),
        ({"templates": {"return_radius_um": 50}}, "data.templates.return_radius_um: must exceed the largest soma distance"),
        ({"noise": {"colour": "pink"}}, "data.noise.colour: unknown key for NoiseConfig"),
    ],
)
def test_bad_values_name_their_key(mapping, message):
    with pytest.raises(ConfigError) as error:
        _build(mapping)
    assert message in str(error.value)


def test_synthesize_validates_dataclasses_built_directly():
    bad = dataclasses.replace(SynthesisConfig(), duration_s=-2.0)
    with pytest.raises(ConfigError, match=r"data\.duration_s: must be > 0; got -2\.0"):
        synthesize(bad)
    bad = dataclasses.replace(
        SynthesisConfig(), templates=TemplatesConfig(min_amplitude_uv=100, max_amplitude_uv=50)
    )
    with pytest.raises(ConfigError, match=r"data\.templates\.min_amplitude_uv"):
        synthesize(bad)
    with pytest.raises(ConfigError, match=r"data\.drift\.fast_interval_s: must be > 0"):
        synthesize(dataclasses.replace(SynthesisConfig(), drift=DriftConfig(fast_interval_s=0)))


def test_probe_block_outside_the_probe_is_an_error():
    with pytest.raises(ConfigError, match=r"data\.probe\.n_channels: sites \[380, 396\) do not fit in a probe of 384"):
        synthesize({"duration_s": 0.01, "probe": {"n_channels": 16, "first_channel": 380}})
