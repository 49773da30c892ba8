"""Collision augmentation (esort_jax.augment): the overlay's geometry and labels, the templates,
the neighbours, and training with it on every data path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tiny import TINY_MODEL, fast_compile, tiny_recording  # noqa: F401 (fixture)
from flax import nnx

from esort_jax import ArrayTraces, GroundTruth, Recording
from esort_jax.augment import CollisionSpec, overlay_collisions, template_neighbours, unit_templates
from esort_jax.checkpoint import flatten_tree
from esort_jax.config import ConfigError, from_dict
from esort_jax.train import TrainConfig, _resume_settings, init_model, train
from esort_jax.windows import WindowConfig, make_windows

W, A = TINY_MODEL.window, TINY_MODEL.anchor


def _impulse_templates(num_units: int, channels: int, D: int) -> np.ndarray:
    """Unit n: a single 1.0 at its spike sample (A + D) on channel n."""
    templates = np.zeros((num_units, W + 2 * D, channels), np.float32)
    for n in range(num_units):
        templates[n, A + D, n] = 1.0
    return templates


def test_overlay_places_partner_at_shift_and_labels_within_jitter():
    N, C, B, D, J, s = 5, 6, 4000, 7, 2, 0.25
    rng = np.random.default_rng(0)
    y = (rng.random((B, N)) < 0.15).astype(np.uint8)
    y[: B // 3] = 0  # all-negative windows too
    neighbours = np.array([[(n + 1) % N, (n + 2) % N] for n in range(N)], np.int32)
    x = jnp.zeros((W, B, C), jnp.float32)
    spec = CollisionSpec(probability=0.5, max_shift=D, jitter=J, scale_jitter=s)
    x2, y2 = jax.jit(overlay_collisions, static_argnums=5)(
        jax.random.key(3), x, jnp.asarray(y), jnp.asarray(_impulse_templates(N, C, D)), jnp.asarray(neighbours), spec)
    x2, y2 = np.asarray(x2), np.asarray(y2)
    applied = np.abs(x2).sum(axis=(0, 2)) > 0
    assert 0.45 < applied.mean() < 0.55
    assert np.array_equal(y2[~applied], y[~applied])  # untouched windows keep their labels
    shifts, partners = [], []
    for b in np.flatnonzero(applied):
        w, c = np.argwhere(x2[:, b] != 0).T
        assert w.size == 1  # one impulse: one partner
        w, partner = int(w[0]), int(c[0])
        assert 1 - s <= x2[w, b, partner] <= 1 + s
        delta = w - A
        shifts.append(delta)
        partners.append(partner)
        positives = np.flatnonzero(y[b])
        if positives.size:  # the partner neighbours one of the window's positive units
            assert any(partner in neighbours[p] for p in positives)
        expected = y[b].copy()
        if abs(delta) <= J:
            expected[partner] = 1
        assert np.array_equal(y2[b], expected)  # only the partner's label may change, never cleared
    # every shift the window can show, within [-D, D] (the impulse lands inside the window)
    assert set(shifts) == set(range(-min(D, A), min(D, W - 1 - A) + 1))


def test_overlay_probability_zero_is_identity_and_draws_follow_the_key():
    N, C, B, D = 3, 4, 64, 5
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((W, B, C)), jnp.float32)
    y = jnp.asarray(rng.random((B, N)) < 0.3, jnp.uint8)
    templates = jnp.asarray(rng.standard_normal((N, W + 2 * D, C)), jnp.float32)
    neighbours = jnp.asarray([[1], [2], [0]], jnp.int32)
    off = CollisionSpec(probability=0.0, max_shift=D, jitter=2, scale_jitter=0.2)
    x0, y0 = overlay_collisions(jax.random.key(0), x, y, templates, neighbours, off)
    assert np.array_equal(np.asarray(x0), np.asarray(x)) and np.array_equal(np.asarray(y0), np.asarray(y))
    on = CollisionSpec(probability=1.0, max_shift=D, jitter=2, scale_jitter=0.2)
    a = overlay_collisions(jax.random.key(0), x, y, templates, neighbours, on)
    b = overlay_collisions(jax.random.key(0), x, y, templates, neighbours, on)
    c = overlay_collisions(jax.random.key(1), x, y, templates, neighbours, on)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))


def test_unit_templates_average_spikes_inside_the_span_only():
    fs, C, D = 32000.0, 3, 4
    rng = np.random.default_rng(2)
    traces = 0.01 * rng.standard_normal((4000, C)).astype(np.float32)
    shape = np.linspace(-5, 5, W + 2 * D).astype(np.float32)
    spikes = np.array([400, 900, 1500, 3500])  # the last lies outside the span
    for s in spikes[:3]:
        traces[s - A - D: s - A - D + W + 2 * D, 1] += shape
    traces[spikes[3] - A - D: spikes[3] - A - D + W + 2 * D, 1] += 100.0
    recording = Recording(ArrayTraces(traces), fs, np.stack([np.zeros(C), 20.0 * np.arange(C)], axis=1))
    sorting = GroundTruth(samples=spikes, unit_indices=np.zeros(4, int), unit_ids=np.array([7]), sampling_frequency=fs)
    templates = unit_templates(recording, sorting, np.array([7, 8]), window=W, anchor=A, max_shift=D,
                               span=(0, 3000))
    assert templates.shape == (2, W + 2 * D, C)
    np.testing.assert_allclose(templates[0, :, 1], shape, atol=0.05)
    assert np.abs(templates[0][:, [0, 2]]).max() < 0.05
    assert not templates[1].any()  # unit 8 has no spike: nothing to overlay


def test_template_neighbours_follow_channel_overlap():
    templates = np.zeros((4, 10, 6), np.float32)
    templates[0, :, 0:2] = 1.0
    templates[1, :, 1:3] = 1.0
    templates[2, :, 4:6] = 1.0
    templates[3, :, 5] = 1.0
    assert template_neighbours(templates, 1)[:, 0].tolist() == [1, 0, 3, 2]
    assert template_neighbours(templates, 5).shape == (4, 5)
    assert 0 not in template_neighbours(templates, 5)[0]  # never itself while others exist
    assert template_neighbours(templates[:1], 3).tolist() == [[0, 0, 0]]


@pytest.fixture(scope="module")
def data():
    recording, truth = tiny_recording(seed=0)
    windows = make_windows(recording, truth, WindowConfig(jitter=3), window=W, anchor=A, seed=0)
    return recording, windows


def _arrays(model):
    return {k: np.asarray(v) for k, v in flatten_tree(nnx.to_pure_dict(nnx.state(model))).items()}


def _trained(recording, windows, **settings):
    model = init_model(recording.num_channels, windows.num_units, TINY_MODEL, seed=0)
    settings = {"epochs": 2, "batch_size": 64, "progress": False, **settings}
    result = train(model, recording, windows, TrainConfig(**settings))
    return _arrays(result.model), result.history[0]["train_loss"]


def test_training_with_collisions_is_seeded_and_the_same_on_every_data_path(data):
    recording, windows = data
    on = dict(collision_probability=0.5, collision_max_shift=8)
    reference, _ = _trained(recording, windows, data_on_device="always", kernel="xla", **on)
    plain, _ = _trained(recording, windows, data_on_device="always", kernel="xla")
    assert any(not np.allclose(reference[k], plain[k]) for k in reference)  # the augmentation changes training
    again, _ = _trained(recording, windows, data_on_device="always", kernel="xla", **on)
    host, _ = _trained(recording, windows, data_on_device="never", kernel="xla", **on)
    for name in reference:
        assert np.array_equal(again[name], reference[name]), name
        np.testing.assert_allclose(host[name], reference[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # The native layer-1 kernel rounds differently, and training amplifies that, so the paths are
    # compared on the loss of one step: the same augmented batch gives the same loss.
    one = dict(max_steps=1, **on)
    losses = [_trained(recording, windows, data_on_device=where, kernel=kernel, **one)[1]
              for where in ("always", "never") for kernel in ("xla", "auto")]
    unaugmented = _trained(recording, windows, data_on_device="always", kernel="xla", max_steps=1)[1]
    assert losses == pytest.approx([losses[0]] * 4, rel=1e-5)
    assert abs(unaugmented - losses[0]) > 1e-3


def test_collision_settings_are_checked_and_kept_out_of_resume_keys_when_off():
    with pytest.raises(ConfigError, match=r"train\.collision_probability"):
        from_dict(TrainConfig, {"collision_probability": 1.5}, "train")
    with pytest.raises(ConfigError, match=r"train\.collision_scale_jitter"):
        from_dict(TrainConfig, {"collision_probability": 0.5, "collision_scale_jitter": 1.0}, "train")
    assert not any(k.startswith("collision_") for k in _resume_settings(TrainConfig(collision_max_shift=3)))
    assert _resume_settings(TrainConfig(collision_probability=0.3))["collision_max_shift"] == 30
    # pretrained networks are cached by their settings: augmented ones are not the plain ones
    from esort_jax.pipeline import PipelineConfig
    from esort_jax.runtime.artifacts import pretrain_key

    def key(**train):
        return pretrain_key(PipelineConfig(train=TrainConfig(kernel="xla", **train)), seed=0, data_key={"d": 1})

    assert key() == key(collision_max_shift=3) != key(collision_probability=0.3)


def test_a_unit_without_a_template_is_never_overlaid_nor_labelled():
    N, C, B, D = 3, 4, 512, 4
    templates = _impulse_templates(N, C, D)
    templates[1] = 0.0  # unit 1: no spike to average
    neighbours = jnp.asarray([[1, 2], [0, 2], [1, 0]], jnp.int32)
    y = jnp.zeros((B, N), jnp.uint8)
    spec = CollisionSpec(probability=1.0, max_shift=D, jitter=D, scale_jitter=0.0)  # every shift labels
    x2, y2 = overlay_collisions(jax.random.key(0), jnp.zeros((W, B, C)), y, jnp.asarray(templates), neighbours,
                                spec, jnp.asarray(templates.any(axis=(1, 2))))
    x2, y2 = np.asarray(x2), np.asarray(y2)
    assert not y2[:, 1].any()  # never a label without a waveform
    assert y2[:, [0, 2]].any(axis=1).mean() > 0.3  # the others are overlaid and labelled
    assert np.array_equal(np.abs(x2).sum(axis=(0, 2)) > 0, y2.any(axis=1))
