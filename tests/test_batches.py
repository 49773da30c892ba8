"""Feeding windows: gathering on the host and on device, the epoch order, the residency plan and
the window feeder."""

import jax
import jax.numpy as jnp
import numpy as np
from _tiny import FS, tiny_recording

from esort_jax import ArrayTraces, Recording
from esort_jax.batches import (
    WindowFeeder, covered_spans, epoch_order, first_nonfinite, gather_device, gather_host, plan_residency, span_bytes,
    steps_per_epoch, take_batch,
)
from esort_jax.windows import WindowSet

W = 20


def test_gather_paths_agree_and_memmap(tmp_path):
    rng = np.random.default_rng(0)
    raw = (rng.standard_normal((3000, 5)) * 100).astype(np.int16)
    np.save(tmp_path / "t.npy", raw)
    mm = np.load(tmp_path / "t.npy", mmap_mode="r")
    recording = Recording(ArrayTraces(mm, gain_to_uv=0.5, offset_to_uv=1.0), FS, np.zeros((5, 2)))
    starts = np.array([0, 17, 2980, 1234])
    expected = np.stack([recording.read(s, s + W) for s in starts])
    np.testing.assert_array_equal(gather_host(recording, starts, W), expected)
    device = gather_device(jnp.asarray(recording.read(0, 3000)), jnp.asarray(starts), W)
    np.testing.assert_array_equal(np.asarray(device), expected)
    # time-major: what the training step consumes
    np.testing.assert_array_equal(gather_host(recording, starts, W, layout="WBC"), expected.transpose(1, 0, 2))


def test_epoch_order():
    key = jax.random.key(0)
    order = np.asarray(epoch_order(key, 3, 10, 4))
    assert steps_per_epoch(10, 4) == 3 and order.size == 12
    assert sorted(order[:10].tolist()) == list(range(10)) and order[10:].tolist() == order[:2].tolist()
    np.testing.assert_array_equal(order, np.asarray(epoch_order(key, 3, 10, 4)))
    assert not np.array_equal(order, np.asarray(epoch_order(key, 4, 10, 4)))


def _windows(starts, num_units=2):
    return WindowSet(np.asarray(starts), np.zeros((len(starts), num_units), np.uint8), W, 9, 0)


def test_residency_plan_follows_the_budget():
    sets = [_windows([0, 980]), _windows([0, 80]), _windows([])]  # spans of 1000, 100 and 0 samples
    need = [span_bytes(s.span(), 4) for s in sets]
    assert need == [16000, 1600, 0]
    assert plan_residency(sets, 4, data_on_device="auto", budget_bytes=17600) == [True, True, False]
    assert plan_residency(sets, 4, data_on_device="auto", budget_bytes=16000) == [True, False, False]
    assert plan_residency(sets, 4, data_on_device="auto", budget_bytes=2000) == [False, True, False]
    assert plan_residency(sets, 4, data_on_device="always", budget_bytes=0) == [True, True, True]
    assert plan_residency(sets, 4, data_on_device="never", budget_bytes=10**9) == [False, False, False]


def test_feeder_paths_give_the_same_batches():
    recording, _ = tiny_recording(seed=1)
    starts = np.sort(np.random.default_rng(0).choice(recording.num_samples - W, 50, replace=False))
    windows = WindowSet(starts, (np.arange(100).reshape(50, 2) % 3 == 0).astype(np.uint8), W, 9, 0)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    order = np.random.default_rng(1).permutation(64) % 50
    resident = WindowFeeder(recording, windows, mesh, batch_size=16, resident=True, prefetch=2)
    host = WindowFeeder(recording, windows, mesh, batch_size=16, resident=False, prefetch=2)
    assert resident.steps == host.steps == 4
    with host.host_batches(order) as batches:
        for i, (x, y) in enumerate(batches):
            want_x, want_y = take_batch(resident.data, jnp.asarray(order), i, 16, W, mesh)
            np.testing.assert_array_equal(np.asarray(x), np.asarray(want_x))
            np.testing.assert_array_equal(np.asarray(y), np.asarray(want_y))
    assert i == 3


def test_first_nonfinite_reads_only_what_the_windows_read():
    """Overlapping and touching windows merge into one span; the first bad value is the earliest
    sample (then lowest channel) inside a window; values between windows do not count."""
    windows = WindowSet(np.array([100, 110, 120, 500]), np.zeros((4, 1), np.uint8), W, 9, 0)
    assert covered_spans(windows) == [(100, 140), (500, 520)]
    traces = np.zeros((1000, 4), np.float32)
    traces[300, 1] = np.nan  # between the windows
    recording = Recording(ArrayTraces(traces), FS, np.zeros((4, 2)))
    assert first_nonfinite(recording, windows, chunk_samples=16) is None
    traces[519, 3], traces[505, 2], traces[505, 0] = np.inf, np.nan, -np.inf
    assert first_nonfinite(recording, windows, chunk_samples=16) == (505, 0, -np.inf)
    assert covered_spans(WindowSet(np.zeros(0, np.int64), np.zeros((0, 1), np.uint8), W, 9, 0)) == []
