"""The harder synthesiser preset's ingredients (conf/data/np1_hard.yaml): bursts with amplitude
attenuation, background cells outside the ground truth, waveform families, lognormal amplitudes;
each off by default, leaving the paper-like recordings bit for bit as they were."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from data_gen import SynthesisConfig, synthesize
from data_gen.bursts import add_bursts
from data_gen.config import FiringConfig, ProbeConfig, TemplatesConfig, UnitsConfig
from data_gen.templates import _amplitude

BASE = SynthesisConfig(duration_s=1.0, seed=5, probe=ProbeConfig(n_channels=16))


def test_bursts_keep_the_refractory_period_and_shrink_each_spike():
    config = FiringConfig(burst_fraction=1.0, burst_probability=1.0, burst_max_spikes=4, burst_isi_ms=(3.0, 8.0),
                          burst_attenuation=0.2)
    samples = np.array([1000, 1100, 5000, 20000, 30000], np.int64)  # unit 0; unit 1 is inhibitory
    units = np.array([0, 0, 0, 1, 1])
    out, out_units, factor = add_bursts(samples, units, np.array(["exc", "inh"]), config, 32000.0, 64, 31000, seed=0)
    train = out[out_units == 0]
    assert np.all(np.diff(train) >= 64) and train.size > 3  # bursts added, never within the dead time
    assert out[out_units == 1].tolist() == [20000, 30000]  # inhibitory units do not burst
    extra = np.setdiff1d(train, samples)
    assert set(np.round(factor[np.isin(out, extra)], 6)) <= {0.8, 0.64, 0.512}
    assert np.all(factor[np.isin(out, samples)] == 1.0)
    same = add_bursts(samples, units, np.array(["exc", "inh"]), FiringConfig(), 32000.0, 64, 31000, seed=0)
    assert same[0] is samples  # off by default


def test_background_cells_are_in_the_traces_not_in_the_truth():
    plain_rec, plain = synthesize(BASE)
    config = dataclasses.replace(BASE, units=dataclasses.replace(BASE.units, background_density_per_mm3=50000.0))
    rec, truth = synthesize(config)
    np.testing.assert_array_equal(truth.samples, plain.samples)  # the ground truth is unchanged
    assert truth.num_units == plain.num_units and truth.unit_table["snr"].shape == (plain.num_units,)
    difference = rec.read(0, 32000) - plain_rec.read(0, 32000)
    assert 0 < np.abs(difference).max() < 100.0  # small spikes added (peaks <= 25 µV, a few overlap)
    assert np.percentile(np.abs(difference), 50) < 2.0


def test_waveform_families_flip_or_lead_the_trough():
    templates = TemplatesConfig(positive_fraction=0.5, triphasic_fraction=0.5)
    rec, truth = synthesize(dataclasses.replace(BASE, templates=templates))
    family = truth.unit_table["waveform_family"]
    assert set(family) == {"positive", "triphasic"}
    bank = rec.traces.bank
    for unit in range(truth.num_units):
        w = bank.dense(unit)[:, truth.unit_table["peak_channel"][unit]]
        at_spike = w[bank.trough_index]
        if family[unit] == "positive":
            assert at_spike == w.max() > 0  # the ground-truth sample is the positive peak
        else:
            assert at_spike == w.min() < 0 and w[: bank.trough_index].max() > 0.1 * -at_spike


def test_lognormal_amplitudes_reach_the_noise():
    config = TemplatesConfig(amplitude_distribution="lognormal", amplitude_median_uv=70.0, amplitude_log_sd=0.6,
                             min_amplitude_uv=15.0, max_amplitude_uv=400.0)
    draws = np.array([_amplitude(config, u) for u in np.linspace(0.001, 0.999, 999)])
    assert np.median(draws) == pytest.approx(70.0, rel=0.01)
    assert 0.25 < np.mean(draws < 50.0) < 0.33 and draws.min() >= 15.0
    assert _amplitude(TemplatesConfig(), 0.5) == pytest.approx(170.0)  # uniform 40-300 as before


def test_hard_presets_compose_and_validate():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from esort_jax.config import from_dict

    conf = os.path.join(os.path.dirname(__file__), "..", "conf", "data")
    with initialize_config_dir(config_dir=os.path.abspath(conf), version_base=None):
        for name in ("np1_hard", "small64_hard"):
            mapping = OmegaConf.to_container(compose(name, overrides=["seed=0"]), resolve=True)
            config = from_dict(SynthesisConfig, mapping, "data")
            assert config.firing.burst_fraction == 0.5 and config.units.background_density_per_mm3 > 0
            assert isinstance(config.units, UnitsConfig)
