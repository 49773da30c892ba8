"""synthesize / write_synthetic: lazy traces equal to their definition, exact chunking,
determinism, ground truth consistent with the data."""

import json

import numpy as np
import pytest

from data_gen import SynthesisConfig, SyntheticTraces, synthesize, write_synthetic
from esort_jax.config import from_dict
from esort_jax.io import read_recording_folder
from esort_jax.recording import GroundTruth, Recording, TraceSource

TINY = {
    "duration_s": 1.5,
    "seed": 7,
    "probe": {"name": "np1", "n_channels": 24, "first_channel": 60},
}


def _config(**overrides):
    mapping = {**TINY}
    for key, value in overrides.items():
        if isinstance(value, dict):
            mapping[key] = {**mapping.get(key, {}), **value}
        else:
            mapping[key] = value
    return from_dict(SynthesisConfig, mapping, "data")


@pytest.fixture(scope="module")
def drifting():
    # Fast slow drift (10 µm/s) so 1.5 s covers 15 µm.
    return synthesize(_config(drift={"mode": "slow", "slow_velocity_um_per_min": 600.0}))


def test_outputs_have_the_documented_shape(drifting):
    recording, truth = drifting
    assert isinstance(recording, Recording) and isinstance(recording.traces, TraceSource)
    assert isinstance(recording.traces, SyntheticTraces)
    assert recording.num_samples == 48000 and recording.num_channels == 24
    assert recording.sampling_frequency == 32000.0
    assert isinstance(truth, GroundTruth) and truth.num_units > 0 and truth.num_spikes > 0
    table = truth.unit_table
    for column in ("position_um", "cell_type", "peak_channel", "peak_amplitude_uv", "snr", "firing_rate_hz"):
        assert len(table[column]) == truth.num_units
    assert table["position_um"].shape == (truth.num_units, 3)
    np.testing.assert_allclose(table["snr"], table["peak_amplitude_uv"] / 10.0)
    assert truth.drift is not None and truth.spike_amplitude_scales.shape == (truth.num_spikes,)
    assert recording.metadata["seed"] == 7 and recording.metadata["config"]["duration_s"] == 1.5
    json.dumps(recording.metadata)  # resolved config is plain JSON
    assert np.all(np.diff(truth.samples) >= 0)
    assert truth.samples.min() >= 0 and truth.samples.max() < recording.num_samples
    block = recording.read(100, 200)
    assert block.dtype == np.float32 and block.shape == (100, 24)


def test_chunked_reads_equal_one_shot_bit_for_bit(drifting):
    recording, truth = drifting
    whole = recording.read()
    assert np.isfinite(whole).all()
    # Chunk boundaries inside spikes: at the first, second, middle and last two samples of
    # templates (a chunk that sees only a spike's tail must still add it).
    bank = recording.traces.bank
    starts = truth.samples[::3] - bank.trough_index
    offsets = [0, 1, 2, bank.trough_index, bank.num_samples - 2, bank.num_samples - 1]
    inside = (starts[:, None] + np.array(offsets)[None, :]).ravel()
    cuts = sorted(set([0, 1, 777, recording.num_samples - 1, recording.num_samples]
                      + inside.clip(0, recording.num_samples).tolist()))
    parts = [recording.read(a, b) for a, b in zip(cuts[:-1], cuts[1:])]
    assert np.array_equal(np.concatenate(parts), whole)
    for chunk in (1000, 4097, 32768):
        assert np.array_equal(np.concatenate([x for _, x in recording.iter_chunks(chunk)]), whole)
    # Any read order, fresh object: same values.
    again, _ = synthesize(_config(drift={"mode": "slow", "slow_velocity_um_per_min": 600.0}))
    assert np.array_equal(again.read(30000, 30100), whole[30000:30100])


def test_read_ahead_gives_the_same_bytes(drifting):
    recording, _ = drifting
    whole = recording.read()
    try:
        for depth in (1, 3):
            recording.traces.read_ahead = depth
            parts = [x for _, x in recording.iter_chunks(5000)]
            assert np.array_equal(np.concatenate(parts), whole)
            assert np.array_equal(recording.read(123, 456), whole[123:456])  # a jump after read-ahead
            assert np.array_equal(recording.read(456, 789), whole[456:789])
    finally:
        recording.traces.read_ahead = 0


def test_traces_are_noise_plus_templates_at_the_drifted_positions(drifting):
    recording, truth = drifting
    traces = recording.traces
    bank = traces.bank
    quiet = SyntheticTraces(
        traces.num_samples,
        type(traces.noise)(traces.noise.config.__class__(std_uv=0.0), recording.channel_positions, 32000.0, 0),
        bank,
        truth.samples,
        truth.unit_indices,
        truth.spike_displacement_um(),
        truth.spike_amplitude_scales,
    )
    clean = quiet.read(0, quiet.num_samples)
    # Rebuild the clean traces spike by spike from the ground truth alone.
    expected = np.zeros_like(clean, dtype=np.float64)
    lead, length = bank.trough_index, bank.num_samples
    displacement = truth.spike_displacement_um()
    for s, u, d, a in zip(truth.samples, truth.unit_indices, displacement, truth.spike_amplitude_scales):
        wave = bank.dense(u, d).astype(np.float64) * a
        t0 = s - lead
        lo, hi = max(0, t0), min(len(clean), t0 + length)
        expected[lo:hi] += wave[lo - t0 : hi - t0]
    np.testing.assert_allclose(clean, expected, atol=1e-3)
    # And the noisy recording is noise + those spikes.
    noise = traces.noise.read(0, traces.num_samples)
    np.testing.assert_allclose(recording.read(), noise + expected, atol=1e-3)


def test_spikes_at_the_very_start_and_end_are_clipped_not_lost(drifting):
    recording, truth = drifting
    traces = recording.traces
    bank = traces.bank
    T = traces.num_samples
    silent_noise = type(traces.noise)(traces.noise.config.__class__(std_uv=0.0), recording.channel_positions, 32000.0, 0)
    samples = np.array([0, 5, T - 3, T - 1])
    units = np.array([0, 1 % truth.num_units, 0, 1 % truth.num_units])
    edge = SyntheticTraces(T, silent_noise, bank, samples, units, np.zeros(4), np.ones(4, np.float32))
    whole = edge.read(0, T)
    for s, u in zip(samples, units):
        assert whole[s, bank.peak_channel[u]] < -0.5 * bank.peak_amplitude_uv[u]
    assert np.array_equal(np.concatenate([edge.read(0, 3), edge.read(3, 40), edge.read(40, T - 2), edge.read(T - 2, T)]), whole)
    assert np.array_equal(edge.read(T - 1, T), whole[T - 1 :])


def test_noise_std_far_from_spikes_is_as_requested():
    recording, truth = synthesize(_config(noise={"std_uv": 12.0}, duration_s=2.0))
    data = recording.read().astype(np.float64)
    bank = recording.traces.bank
    touched = np.zeros(data.shape, bool)
    for s, u in zip(truth.samples, truth.unit_indices):
        t0 = max(0, s - bank.trough_index)
        touched[t0 : s - bank.trough_index + bank.num_samples, bank.channel_start[u] : bank.channel_stop[u]] = True
    quiet = data[~touched]
    assert quiet.size > 0.2 * data.size
    assert abs(quiet.std() / 12.0 - 1) < 0.05
    for c in range(data.shape[1]):
        column = data[~touched[:, c], c]
        if column.size > 5000:
            assert abs(column.std() / 12.0 - 1) < 0.1


def test_ground_truth_rates_and_refractory_period():
    recording, truth = synthesize(_config(duration_s=2.0, units={"n_units": 12}, firing={"exc_rate_hz": 20.0, "inh_rate_hz": 40.0}))
    rates = truth.unit_table["firing_rate_hz"]
    counts = truth.spike_counts()
    expected = rates * recording.duration_s
    sd = np.sqrt(expected) * (1 - rates * 2e-3)
    assert np.all(np.abs(counts - expected) < 5 * sd)
    for u in range(truth.num_units):
        assert np.all(np.diff(truth.unit_samples(u)) >= 64)


def test_same_seed_same_bytes_different_seed_different_data(tmp_path):
    config = _config(duration_s=1.0, drift={"mode": "nonrigid", "slow_velocity_um_per_min": 300.0})
    a = write_synthetic(config, tmp_path / "a", chunk_samples=7000, progress=False)
    b = write_synthetic(config, tmp_path / "b", chunk_samples=32768, progress=False)
    assert (a / "traces.npy").read_bytes() == (b / "traces.npy").read_bytes()
    ga, gb = np.load(a / "ground_truth.npz"), np.load(b / "ground_truth.npz")
    assert sorted(ga.files) == sorted(gb.files)
    for key in ga.files:
        assert np.array_equal(ga[key], gb[key]), key
    loaded, truth = read_recording_folder(a)
    direct, direct_truth = synthesize(config)
    assert np.array_equal(loaded.read(), direct.read())
    assert np.array_equal(truth.samples, direct_truth.samples)
    assert np.array_equal(truth.drift.displacement_um, direct_truth.drift.displacement_um)
    assert loaded.metadata["seed"] == 7 and loaded.metadata["config"]["drift"]["mode"] == "nonrigid"
    assert np.array_equal(loaded.channel_positions, direct.channel_positions)
    with pytest.raises(FileExistsError):
        write_synthetic(config, a, progress=False)
    other = _config(duration_s=1.0, seed=8, drift={"mode": "nonrigid", "slow_velocity_um_per_min": 300.0})
    c = write_synthetic(other, tmp_path / "c", progress=False)
    assert (c / "traces.npy").read_bytes() != (a / "traces.npy").read_bytes()
    assert not np.array_equal(np.load(c / "ground_truth.npz")["samples"][:20], ga["samples"][:20])


def test_changing_one_knob_leaves_other_streams_alone():
    base_rec, base = synthesize(_config(duration_s=1.0))
    noisier_rec, noisier = synthesize(_config(duration_s=1.0, noise={"std_uv": 20.0}))
    assert np.array_equal(base.samples, noisier.samples)
    assert np.array_equal(base.unit_table["position_um"], noisier.unit_table["position_um"])
    longer_rec, longer = synthesize(_config(duration_s=2.0))
    keep = longer.samples < base_rec.num_samples
    assert np.array_equal(longer.samples[keep], base.samples)
    assert np.array_equal(longer.spike_amplitude_scales[keep], base.spike_amplitude_scales)
    assert np.array_equal(longer_rec.read(0, 20000), base_rec.read(0, 20000))


def test_pretraining_data_on_the_geometry_of_an_existing_recording(tmp_path):
    target = write_synthetic(_config(duration_s=0.2, probe={"name": "np2", "n_channels": 16, "first_channel": 0}),
                             tmp_path / "target", progress=False)
    recording, _ = read_recording_folder(target)
    source, truth = synthesize(
        {"duration_s": 0.2, "seed": 99, "units": {"density_per_mm3": 15000.0},
         "probe": {"positions_um": recording.channel_positions.tolist()}}
    )
    assert np.array_equal(source.channel_positions, recording.channel_positions)
    assert source.read(0, 100).shape == (100, 16)
    volume_mm3 = (32 + 60) * (105 + 60) * 70 * 1e-9  # 16 NP2 sites span 32 x 105 µm; 30 µm overhang
    assert truth.num_units == round(15000 * volume_mm3)
