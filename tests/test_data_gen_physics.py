"""data_gen's models: units, templates, firing, drift and noise each do what they claim."""

import math

import numpy as np
import pytest

from data_gen.config import DriftConfig, FiringConfig, NoiseConfig, TemplatesConfig, UnitsConfig
from data_gen.drift import displacement_ranges, make_drift
from data_gen.firing import draw_rates, expected_count_and_sd, refractory_samples, spike_trains
from data_gen.noise import NoiseSource, channel_correlation, resampling_factors
from data_gen.probes import make_probe
from data_gen.templates import build_templates, draw_shapes, exact_template
from data_gen.units import count_units, place_units, slab_volume_mm3

FS = 32000.0


@pytest.fixture(scope="module")
def np1_32():
    return make_probe("np1", n_channels=32, first_channel=120).contact_positions


def _units_and_bank(positions, seed=0, n_units=None, ranges=None, templates=TemplatesConfig()):
    units = place_units(UnitsConfig(n_units=n_units), positions, seed)
    shapes = draw_shapes(templates, units.cell_type, seed)
    if ranges is not None:
        ranges = np.tile(ranges, (units.num_units, 1))
    bank = build_templates(templates, units, shapes, positions, FS, ranges)
    return units, shapes, bank


def test_unit_count_follows_density_and_volume(np1_32):
    config = UnitsConfig(density_per_mm3=10000.0)
    volume = slab_volume_mm3(config, np1_32)
    # 32 NP1 sites span 48 x 300 µm; slab (48 + 60) x (300 + 60) x 70 µm³.
    assert volume == pytest.approx(108 * 360 * 70 * 1e-9)
    assert count_units(config, np1_32) == round(10000 * volume)
    units = place_units(UnitsConfig(density_per_mm3=15000.0), np1_32, seed=3)
    assert units.num_units == round(15000 * volume)
    low = np1_32.min(axis=0) - 30
    high = np1_32.max(axis=0) + 30
    pos = units.positions_um
    assert np.all(pos[:, :2] >= low) and np.all(pos[:, :2] <= high)
    assert np.all((pos[:, 2] >= 10) & (pos[:, 2] <= 80))
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(len(pos)) * 1e9
    assert d.min() >= 25.0
    # Adding units keeps the first ones where they were.
    more = place_units(UnitsConfig(n_units=units.num_units + 5), np1_32, seed=3)
    assert np.array_equal(more.positions_um[: units.num_units], pos)


def test_cell_type_mix_is_about_80_20():
    positions = make_probe("np1").contact_positions
    units = place_units(UnitsConfig(), positions, seed=1)
    frac = np.mean(units.cell_type == "inh")
    n = units.num_units
    assert abs(frac - 0.2) < 4 * math.sqrt(0.2 * 0.8 / n)


def test_peak_channel_is_the_nearest_site_or_a_neighbour(np1_32):
    units, _, bank = _units_and_bank(np1_32, seed=2)
    d = np.linalg.norm(np1_32[None, :, :] - units.positions_um[:, None, :2], axis=-1)
    nearest = d.argmin(axis=1)
    site_d = np.linalg.norm(np1_32[:, None] - np1_32[None], axis=-1)
    neighbour = site_d <= 33.0  # NP1: diagonal neighbours 25.6 µm, same row 32 µm
    for i in range(units.num_units):
        dense = bank.dense(i)
        assert int(np.argmax(np.abs(dense).max(axis=0))) == bank.peak_channel[i]
        assert neighbour[nearest[i], bank.peak_channel[i]], (i, nearest[i], bank.peak_channel[i])
    assert np.mean(bank.peak_channel == nearest) > 0.8


def test_template_amplitude_shape_and_trough_alignment(np1_32):
    config = TemplatesConfig()
    units, shapes, bank = _units_and_bank(np1_32, seed=4, n_units=40)
    assert np.all(bank.peak_amplitude_uv >= 40 - 1e-3) and np.all(bank.peak_amplitude_uv <= 300 + 1e-3)
    np.testing.assert_allclose(bank.peak_amplitude_uv, shapes.amplitude_uv, rtol=1e-5)
    assert bank.num_samples >= 0.003 * FS and bank.trough_index == 32
    for i in range(units.num_units):
        dense = bank.dense(i)
        peak = dense[:, bank.peak_channel[i]]
        trough = int(np.argmin(peak))
        assert trough == bank.trough_index  # the ground-truth sample is the trough
        assert peak[trough] == pytest.approx(-bank.peak_amplitude_uv[i], rel=1e-6)
        t2p_ms = (trough + np.argmax(peak[trough:]) - trough) / FS * 1e3
        low, high = config.exc_trough_to_peak_ms if units.cell_type[i] == "exc" else config.inh_trough_to_peak_ms
        assert low - 0.1 <= t2p_ms <= high + 0.1, (units.cell_type[i], t2p_ms)
        assert abs(dense[0]).max() < 1e-3 * bank.peak_amplitude_uv[i]  # tapered to zero at both ends
        assert abs(dense[-1]).max() < 1e-3 * bank.peak_amplitude_uv[i]
        # Farther sites: smaller and broader troughs.
        dist = np.linalg.norm(np1_32 - units.positions_um[i, :2], axis=1)
        far = bank.channel_start[i] + np.argmax(
            np.where(np.abs(dense[:, bank.channel_start[i] : bank.channel_stop[i]]).max(axis=0) > 0.2 * bank.peak_amplitude_uv[i],
                     dist[bank.channel_start[i] : bank.channel_stop[i]], -1))
        if dist[far] > dist[bank.peak_channel[i]] + 30:
            def centroid_hz(x):  # mean frequency of the waveform's power: lower = broader
                power = np.abs(np.fft.rfft(x, 1024)) ** 2
                return np.sum(power * np.fft.rfftfreq(1024, 1 / FS)) / power.sum()
            assert np.abs(dense[:, far]).max() < np.abs(peak).max()
            assert centroid_hz(dense[:, far]) < centroid_hz(peak)
    exc = units.cell_type == "exc"
    if exc.any() and (~exc).any():
        assert shapes.trough_to_peak_ms[exc].min() > shapes.trough_to_peak_ms[~exc].max()


def test_templates_move_with_displacement_and_interpolate_accurately(np1_32):
    config = TemplatesConfig()
    units, shapes, bank = _units_and_bank(np1_32, seed=5, ranges=(-20.0, 20.0))
    ys = np1_32[:, 1]
    checked = 0
    for i in range(units.num_units):
        y = units.positions_um[i, 1]
        if not (ys.min() + 110 < y < ys.max() - 110):
            continue  # the footprint must stay on the probe for a fair centre of mass
        def com(displacement):
            weight = np.abs(bank.dense(i, displacement)).max(axis=0) ** 2
            return float(np.sum(weight * ys) / weight.sum())
        base = com(0.0)
        for d in (-20.0, -7.0, 5.0, 13.0, 20.0):
            assert com(d) - base == pytest.approx(d, abs=3.0)
        exact = exact_template(config, shapes, bank, i, units.positions_um[i] + [0, 7.0, 0], np1_32, FS)
        err = np.abs(bank.dense(i, 7.0) - exact).max()
        assert err < 0.01 * bank.peak_amplitude_uv[i]
        checked += 1
    assert checked >= 3


def test_line_source_model_elongates_footprints_in_depth(np1_32):
    units = place_units(UnitsConfig(n_units=20), np1_32, 6)
    spread = {}
    for model in ("point", "line"):
        config = TemplatesConfig(model=model, line_length_um=60.0)
        shapes = draw_shapes(config, units.cell_type, 6)
        bank = build_templates(config, units, shapes, np1_32, FS)
        spread[model] = [
            np.sum(np.abs(bank.dense(i)).max(axis=0) > 0.5 * bank.peak_amplitude_uv[i]) for i in range(20)
        ]
    assert np.mean(spread["line"]) > np.mean(spread["point"])


def test_spike_counts_match_rates_without_refractory_violations():
    config = FiringConfig()
    cell_type = np.array(["exc"] * 40 + ["inh"] * 10)
    rates = draw_rates(config, cell_type, seed=0)
    assert np.all(rates >= config.min_rate_hz) and np.all(rates <= config.max_rate_hz)
    duration = 200.0
    samples, units = spike_trains(rates, int(duration * FS), FS, config.refractory_ms, seed=0)
    assert np.all(np.diff(samples) >= 0)
    dead = refractory_samples(config.refractory_ms, FS)
    counts = np.bincount(units, minlength=50)
    z = []
    for i in range(50):
        train = samples[units == i]
        assert np.all(np.diff(train) >= dead)  # zero refractory violations
        mean, sd = expected_count_and_sd(rates[i], duration, config.refractory_ms * 1e-3)
        z.append((counts[i] - mean) / sd)
        assert abs(z[-1]) < 5, (i, rates[i], counts[i], mean, sd)
    total_mean = sum(expected_count_and_sd(r, duration, 2e-3)[0] for r in rates)
    total_sd = math.sqrt(sum(expected_count_and_sd(r, duration, 2e-3)[1] ** 2 for r in rates))
    assert abs(counts.sum() - total_mean) < 4 * total_sd
    # A high rate close to 1 / t_ref still has the right mean (the dead time is compensated).
    fast = spike_trains(np.array([250.0]), int(20 * FS), FS, 2.0, seed=1)[0]
    mean, sd = expected_count_and_sd(250.0, 20.0, 2e-3)
    assert abs(fast.size - mean) < 5 * sd and np.diff(fast).min() >= 64
    # Prefix stability: a longer recording keeps the spikes of a shorter one.
    short = spike_trains(rates, int(50 * FS), FS, config.refractory_ms, seed=0)
    keep = samples < int(50 * FS)
    assert np.array_equal(short[0], samples[keep]) and np.array_equal(short[1], units[keep])


@pytest.mark.parametrize("mode", ["slow", "fast", "nonrigid"])
def test_drift_modes_follow_their_definition(mode):
    config = DriftConfig(mode=mode, fast_interval_s=20.0, fast_with_slow=False)
    y = np.array([0.0, 500.0, 1000.0, 1500.0])
    duration = 300.0
    drift = make_drift(config, y, int(duration * FS), FS, seed=2, probe_y_range_um=(0.0, 1500.0))
    d = drift.displacement_um
    assert np.all(np.diff(drift.samples) > 0) and drift.samples[0] == 0
    assert np.all(d[0] == 0)
    t = drift.samples / FS
    if mode == "slow":
        assert np.all(d == d[:, :1])  # rigid
        assert np.abs(d).max() <= 15.0 + 1e-9 and np.ptp(d) == pytest.approx(30.0, abs=0.5)
        speed = np.abs(np.diff(d[:, 0]) / np.diff(t))
        assert speed.max() == pytest.approx(10.0 / 60.0, rel=1e-6)
    elif mode == "fast":
        assert np.all(d == d[:, :1])
        steps = np.diff(d[:, 0])
        jumps = np.flatnonzero(steps != 0)
        assert len(jumps) >= 10  # ~ every 20 s over 300 s
        assert np.all(np.diff(drift.samples)[jumps] == 1)  # a jump takes one sample
        assert np.all(np.abs(steps[jumps]) <= 15.0 + 1e-9) and np.all(np.abs(steps[jumps]) >= 7.5 - 1e-9)
        assert np.abs(d).max() <= 15.0 + 1e-9
    else:
        ratio = d[np.argmax(np.abs(d[:, 0])), :] / d[np.argmax(np.abs(d[:, 0])), 0]
        assert np.all(ratio >= -1e-9) and np.ptp(ratio) > 0.1  # same direction, depth-dependent size
        assert np.abs(d).max() <= 15.0 + 1e-9
    ranges = displacement_ranges(drift, 4)
    assert np.all(ranges[:, 0] <= 0) and np.all(ranges[:, 1] >= 0)
    assert make_drift(DriftConfig(mode="none"), y, 100, FS, 0) is None


def test_noise_has_the_requested_std_correlation_and_band(np1_32):
    config = NoiseConfig(std_uv=7.0)
    source = NoiseSource(config, np1_32, FS, seed=3)
    x = source.read(0, int(1.0 * FS)).astype(np.float64)
    assert np.all(np.abs(x.std(axis=0) / 7.0 - 1) < 0.05)
    assert abs(x.std() / 7.0 - 1) < 0.02
    # Spatial correlation decays with distance, as the mixing matrix predicts.
    measured = np.corrcoef(x.T)
    predicted = channel_correlation(source.mixing)
    assert np.abs(measured - predicted).max() < 0.08
    d = np.linalg.norm(np1_32[:, None] - np1_32[None], axis=-1)
    assert predicted[(d > 0) & (d < 30)].mean() > 0.2 > predicted[d > 80].max()
    # Band-limited: little power above ~7 kHz, and strong lag-1 correlation in time.
    spectrum = np.mean(np.abs(np.fft.rfft(x[:32000], axis=0)) ** 2, axis=1)
    freqs = np.fft.rfftfreq(32000, 1 / FS)
    assert spectrum[freqs > 8000].mean() < 1e-3 * spectrum[(freqs > 300) & (freqs < 4000)].mean()
    assert np.mean(x[1:] * x[:-1]) / np.mean(x * x) > 0.6
    assert resampling_factors(FS, 6000.0) == (5, 2)
    white = NoiseSource(NoiseConfig(lowpass_hz=None, spatial_mix=0.0), np1_32, FS, seed=3).read(0, 32000)
    assert abs(np.mean(white[1:] * white[:-1]) / np.mean(white * white)) < 0.02
    assert np.abs(np.corrcoef(white.T) - np.eye(32)).max() < 0.05


def test_noise_is_random_access_and_seeded_per_block(np1_32):
    source = NoiseSource(NoiseConfig(), np1_32, FS, seed=11)
    whole = source.read(0, 50000)
    fresh = NoiseSource(NoiseConfig(), np1_32, FS, seed=11)
    assert np.array_equal(fresh.read(31234, 40000), whole[31234:40000])  # without generating the start
    parts = [fresh.read(a, b) for a, b in [(0, 1), (1, 10239), (10239, 10241), (10241, 50000)]]
    assert np.array_equal(np.concatenate(parts), whole)
    other = NoiseSource(NoiseConfig(), np1_32, FS, seed=12).read(0, 1000)
    assert not np.allclose(other, whole[:1000])
    assert not np.any(NoiseSource(NoiseConfig(std_uv=0.0), np1_32, FS, 0).read(5, 50))


def test_noise_does_not_depend_on_blas_threads_or_the_computing_thread():
    # OpenBLAS's 1- and 2-thread sgemm differ in the last bits; data_gen keeps every GEMM
    # small enough to always run single-threaded, so bytes never depend on the setting.
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    positions = make_probe("np1").contact_positions  # full width: the largest GEMMs
    source = NoiseSource(NoiseConfig(), positions, FS, seed=5)
    reference = source._compute_block(2)
    with threadpool_limits(1, "blas"):
        assert np.array_equal(source._compute_block(2), reference)
    with ThreadPoolExecutor(1) as pool:
        assert np.array_equal(pool.submit(source._compute_block, 2).result(), reference)
