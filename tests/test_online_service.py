"""esort_jax.online.service over real ZeroMQ sockets (ipc endpoints in a temp folder, the service
in a thread): spikes equal the offline sort of each contiguous stretch; malformed blocks are
dropped with an error event and the service keeps going; gaps, restarts and late blocks are
reported; SIGTERM writes the spikes so far to a sorting folder. Every wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import zmq

from esort_jax.infer import fold_batchnorm
from esort_jax.io import read_sorting_npz
from esort_jax.online import OnlineConfig, OnlineSorter, protocol
from esort_jax.online.service import ServiceConfig, SortingService, stop_on_signals
from esort_jax.sort import sort_recording
from esort_jax.train import init_model
from tests._tiny import TINY_MODEL, tiny_recording

BLOCK = 320  # samples per block (10 ms)
THRESHOLD = 4.0
TIMEOUT_S = 30.0  # longest any single wait in these tests may take


@pytest.fixture(scope="module")
def setup():
    recording, _ = tiny_recording(duration_s=0.3)
    model = init_model(recording.num_channels, 3, TINY_MODEL, seed=1)
    model.eval()
    params = fold_batchnorm(model)
    sorter = OnlineSorter(params, [7, 8, 9], threshold=THRESHOLD, sampling_frequency=recording.sampling_frequency,
                          config=OnlineConfig(max_steps=256), channel_positions=recording.channel_positions,
                          channel_ids=recording.channel_ids)
    sorter.warm_up()
    return recording, params, sorter


class Harness:
    """The service in a thread, a PUSH socket feeding it and a SUB socket reading it."""

    def __init__(self, sorter, tmp_path, stop=None, **config):
        self.config = ServiceConfig(input_endpoint=f"ipc://{tmp_path}/in", output_endpoint=f"ipc://{tmp_path}/out",
                                    status_every_s=0.2, write_spikeinterface=False, **config)
        self.context = zmq.Context()
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.connect(self.config.output_endpoint)  # before the bind: misses nothing
        self.push = self.context.socket(zmq.PUSH)
        self.push.setsockopt(zmq.SNDTIMEO, 5000)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(self.config.input_endpoint)
        self.stop = stop or threading.Event()
        self.service = SortingService(sorter, self.config, tmp_path, context=self.context)
        self.result: dict = {}
        self.thread = threading.Thread(target=lambda: self.result.update(self.service.run(self.stop, max_seconds=120)))
        self.spikes, self.events = [], []
        self.thread.start()
        self.wait(lambda: self.events)  # subscribed ('ready' may precede the subscription: PUB/SUB)

    def send(self, seq, first, samples, **kwargs):
        self.push.send_multipart(protocol.pack_block(seq, first, samples, 32000.0, **kwargs))

    def wait(self, condition, timeout_s=TIMEOUT_S):
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"timed out; events so far: {[e['event'] for e in self.events]}"
            if self.sub.poll(100):
                frames = self.sub.recv_multipart()
                if frames[0] == protocol.TOPIC_SPIKES:
                    self.spikes.append(protocol.unpack_spikes(frames))
                else:
                    self.events.append(protocol.unpack_event(frames))

    def covered(self, seq):
        return lambda: any(h.num_blocks and h.last_seq == seq for h, _ in self.spikes)

    def close(self):
        self.stop.set()
        self.thread.join(TIMEOUT_S)
        assert not self.thread.is_alive(), "the service did not stop"
        self.wait(lambda: any(e["event"] == "stopped" for e in self.events))
        self.context.destroy(linger=0)

    def records(self):
        records = np.concatenate([r for _, r in self.spikes]) if self.spikes else np.zeros(0, protocol.SPIKE_RECORD)
        return np.sort(records, order=["sample", "unit"])

    def kinds(self, kind):
        return [e for e in self.events if e["event"] == kind]


def _offline(params, recording, start, stop):
    result = sort_recording(params, recording, [7, 8, 9], threshold=THRESHOLD, start=start, stop=stop)
    records = np.zeros(result.sorting.num_spikes, protocol.SPIKE_RECORD)
    records["sample"] = result.sorting.samples
    records["unit"] = result.sorting.unit_ids[result.sorting.unit_indices]
    records["score"] = result.scores
    return records


def _send_blocks(harness, x, seqs, first_block):
    for i, seq in enumerate(seqs):
        a = (first_block + i) * BLOCK
        harness.send(seq, a, x[a:a + BLOCK])


def test_bad_messages_gaps_and_restarts_are_reported_and_each_stretch_equals_the_offline_sort(setup, tmp_path):
    recording, params, sorter = setup
    x = recording.read()
    harness = Harness(sorter, tmp_path)
    try:
        _send_blocks(harness, x, range(0, 20), 0)  # samples [0, 20 blocks)
        harness.send(20, 20 * BLOCK, np.zeros((BLOCK, 8), np.int16))  # wrong dtype
        harness.send(21, 21 * BLOCK, x[21 * BLOCK:22 * BLOCK, :5])  # wrong channel count
        harness.push.send_multipart([b"garbage"])  # not a block at all
        _send_blocks(harness, x, range(22, 30), 22)  # a gap: blocks 20, 21 never arrived
        _send_blocks(harness, x, range(0, 10), 0)  # the publisher restarts
        harness.wait(harness.covered(9))
        seen = len(harness.kinds("status"))
        harness.wait(lambda: len(harness.kinds("status")) > seen)  # a status after everything
    finally:
        harness.close()
    expected = np.sort(np.concatenate([_offline(params, recording, 0, 20 * BLOCK),
                                       _offline(params, recording, 22 * BLOCK, 30 * BLOCK),
                                       _offline(params, recording, 0, 10 * BLOCK)]), order=["sample", "unit"])
    np.testing.assert_array_equal(harness.records(), expected)
    errors = [e["message"] for e in harness.kinds("error")]
    assert len(errors) == 3 and "int16" in errors[0] and "5 channels" in errors[1] and "2 frames" in errors[2]
    (gap,) = harness.kinds("gap")
    assert (gap["expected_seq"], gap["got_seq"], gap["missing_samples"]) == (20, 22, 2 * BLOCK)
    assert len(harness.kinds("restart")) == 1
    statuses = harness.kinds("status")
    assert statuses[-1]["errors"] == 3 and statuses[-1]["gaps"] == 1
    assert any(s["lag_ms_max"] is not None and s["lag_ms_max"] >= 0 for s in statuses)
    saved = read_sorting_npz(tmp_path / "sorting" / "sorting.npz")
    first_stream = [_offline(params, recording, a * BLOCK, b * BLOCK)["sample"] for a, b in ((0, 20), (22, 30))]
    restarted = _offline(params, recording, 0, 10 * BLOCK)["sample"] + 30 * BLOCK  # placed after the first stream
    np.testing.assert_array_equal(np.sort(saved.samples), np.sort(np.concatenate([*first_stream, restarted])))
    streams = json.loads((tmp_path / "sorting" / "segments.json").read_text())["streams"]
    assert [(st["first_sample"], st["end_sample"], st["sample_offset"]) for st in streams] == [
        (0, 30 * BLOCK, 0), (0, 10 * BLOCK, 30 * BLOCK)]
    assert harness.result["blocks"] == 38 and harness.result["gaps"] == 1 and harness.result["restarts"] == 1
    assert harness.result["complete"] is False and harness.result["channels_checked"] is False  # data was lost
    (stopped,) = harness.kinds("stopped")
    assert stopped["complete"] is False


def test_blocks_later_than_max_lag_are_dropped_and_the_stream_resumes_after_a_gap(setup, tmp_path):
    recording, params, sorter = setup
    x = recording.read()
    harness = Harness(sorter, tmp_path, max_lag_ms=200.0)
    try:
        _send_blocks(harness, x, range(0, 5), 0)
        for seq in range(5, 8):  # sent a second ago: too late to be worth sorting
            harness.send(seq, seq * BLOCK, x[seq * BLOCK:(seq + 1) * BLOCK], send_time=time.time() - 1.0)
        _send_blocks(harness, x, range(8, 12), 8)
        harness.wait(harness.covered(11))
    finally:
        harness.close()
    assert len(harness.kinds("dropped")) == 3 and harness.kinds("gap")[0]["missing_samples"] == 3 * BLOCK
    expected = np.sort(np.concatenate([_offline(params, recording, 0, 5 * BLOCK),
                                       _offline(params, recording, 8 * BLOCK, 12 * BLOCK)]), order=["sample", "unit"])
    np.testing.assert_array_equal(harness.records(), expected)
    lags = [1e3 * (h.publish_time - h.send_time) for h, _ in harness.spikes if h.num_blocks]
    assert max(lags) < 10_000


def test_sigterm_stops_the_service_and_writes_the_spikes_so_far(setup, tmp_path):
    recording, params, sorter = setup
    x = recording.read()
    with stop_on_signals() as stop:
        harness = Harness(sorter, tmp_path, stop=stop)
        try:
            _send_blocks(harness, x, range(0, 15), 0)
            harness.wait(harness.covered(14))
            os.kill(os.getpid(), signal.SIGTERM)  # the handler sets `stop`
            harness.wait(lambda: harness.kinds("stopped"))
        finally:
            harness.close()
    saved = read_sorting_npz(tmp_path / "sorting" / "sorting.npz")
    expected = _offline(params, recording, 0, 15 * BLOCK)
    np.testing.assert_array_equal(saved.samples, expected["sample"])
    assert not (tmp_path / "spikes.partial").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    assert harness.result["complete"] is True  # nothing refused, no gap
    info = json.loads((tmp_path / "sorting" / "segments.json").read_text())
    assert info["complete"] is True and info["channels_checked"] is False


def test_the_spike_log_writes_off_the_sorting_thread_and_reports_a_failed_write(tmp_path):
    from esort_jax.io import read_sorting_npz
    from esort_jax.online.spike_log import SpikeLog

    log = SpikeLog(tmp_path / "ok", [4, 5], 32000.0)
    rng = np.random.default_rng(0)
    for start in range(0, 5000, 100):
        log.append(np.arange(start, start + 100), rng.integers(0, 2, 100), rng.random(100).astype(np.float32))
    saved = read_sorting_npz(log.write_sorting(spikeinterface=False) / "sorting.npz")
    assert saved.num_spikes == 5000 and np.array_equal(np.sort(saved.samples), np.arange(5000))

    class FullDisk:
        def write(self, data):
            raise OSError(28, "No space left on device")

        def flush(self):
            pass

        def close(self):
            pass

    broken = SpikeLog(tmp_path / "full", [4, 5], 32000.0)
    broken._file.close()
    broken._file = FullDisk()
    broken.append(np.arange(3), np.zeros(3, int), np.ones(3, np.float32))
    broken._writer.join(5)  # the writer stopped at the error
    with pytest.raises(OSError, match="No space left"):
        broken.append(np.arange(3, 6), np.zeros(3, int), np.ones(3, np.float32))
    with pytest.raises(OSError, match="No space left"):
        broken.write_sorting(spikeinterface=False)
    assert not (tmp_path / "full" / "sorting").exists()


def test_streaming_cpu_settings_apply_before_jax_starts_and_refuse_what_cannot_apply():
    import subprocess
    import sys

    code = """
import os, json, jax.numpy as jnp
from esort_jax.online.cpu import configure_streaming_cpu
core = sorted(os.sched_getaffinity(0))[-1]
for bad in ({"cores": [10_000]}, {"cores": []}, {"realtime_priority": 0}):
    try:
        configure_streaming_cpu(**bad)
        raise SystemExit(f"accepted {bad}")
    except ValueError as error:
        print("refused", bad, error)
state = configure_streaming_cpu(cores=[core])
assert state["cores"] == [core] and state["cpu_async_dispatch"] is False, state
assert "--xla_cpu_multi_thread_eigen=false" in os.environ["XLA_FLAGS"]
jnp.ones(3).sum().block_until_ready()
try:
    configure_streaming_cpu()
    raise SystemExit("accepted after JAX started")
except RuntimeError as error:
    print("refused late:", error)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in __import__("os").environ.items() if k != "XLA_FLAGS"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("refused") == 4 and "before the first JAX computation" in done.stdout


def test_a_publisher_clock_far_behind_is_not_taken_for_lag(setup, tmp_path):
    """Send times 5 s in the past on every block (another machine's clock): nothing is dropped
    with max_lag_ms=200, and the status events report the offset, not a 5 s lag."""
    recording, params, sorter = setup
    x = recording.read()
    harness = Harness(sorter, tmp_path, max_lag_ms=200.0)
    try:
        for seq in range(12):
            harness.send(seq, seq * BLOCK, x[seq * BLOCK:(seq + 1) * BLOCK], send_time=time.time() - 5.0)
            time.sleep(0.05)
        harness.wait(harness.covered(11))
        time.sleep(0.5)  # status events every 0.2 s
    finally:
        harness.close()
    assert not harness.kinds("dropped") and not harness.kinds("gap")
    status = [e for e in harness.kinds("status") if e["lag_ms_max"] is not None]
    assert status and all(e["lag_ms_max"] < 200 for e in status)
    assert all(4900 < e["clock_offset_ms"] < 5500 for e in status)
    np.testing.assert_array_equal(harness.records(), _offline(params, recording, 0, 12 * BLOCK))


def test_a_described_stream_is_reordered_into_the_networks_channels_and_a_wrong_one_refused(setup, tmp_path):
    """Columns arriving in another order (described by position) give the offline sort's spikes;
    a description of other channels is refused and so are the blocks after it, until a matching
    description arrives."""
    recording, params, sorter = setup
    x = recording.read()
    perm = np.random.default_rng(3).permutation(x.shape[1])
    positions = recording.channel_positions
    harness = Harness(sorter, tmp_path)
    try:
        harness.push.send_multipart(protocol.pack_stream(channel_positions=positions[perm], sampling_frequency=32000.0))
        for seq in range(10):
            harness.send(seq, seq * BLOCK, x[seq * BLOCK:(seq + 1) * BLOCK][:, perm])
        harness.push.send_multipart(protocol.pack_stream(channel_positions=positions + [0.0, 7.0]))  # other sites
        for seq in (10, 11):
            harness.send(seq, seq * BLOCK, x[seq * BLOCK:(seq + 1) * BLOCK])
        harness.push.send_multipart(protocol.pack_stream(channel_ids=recording.channel_ids))  # ids, network order
        _send_blocks(harness, x, range(12, 20), 12)
        harness.wait(harness.covered(19))
    finally:
        harness.close()
    expected = np.sort(np.concatenate([_offline(params, recording, 0, 10 * BLOCK),
                                       _offline(params, recording, 12 * BLOCK, 20 * BLOCK)]), order=["sample", "unit"])
    assert expected.size > 5
    np.testing.assert_array_equal(harness.records(), expected)
    streams = harness.kinds("stream")
    assert [(e["checked"], e["reordered"]) for e in streams] == [(True, True), (True, False)]
    errors = [e["message"] for e in harness.kinds("error")]
    assert len(errors) == 3 and "description refused" in errors[0] and "no stream channel within 1 µm" in errors[0]
    assert all("do not match the network's" in message for message in errors[1:])
    (gap,) = harness.kinds("gap")
    assert (gap["expected_seq"], gap["got_seq"]) == (10, 12)
    assert harness.result["channels_checked"] is True and harness.result["complete"] is False


def test_with_require_stream_description_undescribed_blocks_are_refused(setup, tmp_path):
    recording, params, sorter = setup
    x = recording.read()
    harness = Harness(sorter, tmp_path, require_stream_description=True)
    try:
        harness.send(0, 0, x[:BLOCK])
        harness.wait(lambda: harness.kinds("error"))
        harness.push.send_multipart(protocol.pack_stream(channel_positions=recording.channel_positions,
                                                         sampling_frequency=30000.0))  # the wrong rate
        harness.wait(lambda: len(harness.kinds("error")) == 2)
        harness.push.send_multipart(protocol.pack_stream(channel_positions=recording.channel_positions))
        _send_blocks(harness, x, range(1, 6), 1)
        harness.wait(harness.covered(5))
    finally:
        harness.close()
    errors = [e["message"] for e in harness.kinds("error")]
    assert "no stream description has been received" in errors[0] and "30000 Hz" in errors[1]
    np.testing.assert_array_equal(harness.records(), _offline(params, recording, BLOCK, 6 * BLOCK))
    assert harness.result["channels_checked"] is True


def test_a_description_that_cannot_be_checked_is_refused_only_when_one_is_required(setup, tmp_path):
    recording, params, sorter = setup
    x = recording.read()
    for required in (False, True):
        harness = Harness(sorter, tmp_path / str(required), require_stream_description=required)
        try:
            harness.push.send_multipart(protocol.pack_stream())  # describes nothing: cannot be compared
            _send_blocks(harness, x, range(0, 3), 0)
            harness.wait(lambda: len(harness.kinds("error")) == 4 if required else harness.covered(2)())
        finally:
            harness.close()
        if required:
            assert "description refused: it cannot be checked" in harness.kinds("error")[0]["message"]
            assert not harness.records().size and harness.result["blocks"] == 0
        else:
            assert [e["checked"] for e in harness.kinds("stream")] == [False]
            assert harness.result["channels_checked"] is False and harness.result["blocks"] == 3


def test_each_publisher_restart_is_a_segment_of_the_spikeinterface_sorting(tmp_path):
    """Two streams numbered from 0 (a restart between them), the second one empty at first and
    one with no spikes at all: si/ has one segment per stream in the publisher's numbering,
    sorting.npz one timeline with the later streams after the earlier ones."""
    import spikeinterface.core as si

    from esort_jax.online.spike_log import SpikeLog

    log = SpikeLog(tmp_path, [7, 8], 32000.0)
    log.begin_segment(0, 0, "start")
    log.append([100, 900], [0, 1], [2.0, 3.0])
    log.extend_segment(1000, 9)
    log.begin_segment(1200, 12, "gap")  # same numbering: the same stream
    log.append([1500], [1], [2.5])
    log.extend_segment(2000, 19)
    log.begin_segment(0, 0, "restart")
    log.append([50, 60], [1, 0], [2.0, 2.0])
    log.extend_segment(800, 7)
    log.begin_segment(0, 0, "restart")  # a stream without spikes
    log.extend_segment(100, 0)
    folder = log.write_sorting()
    saved = read_sorting_npz(folder / "sorting.npz")
    np.testing.assert_array_equal(saved.samples, [100, 900, 1500, 2050, 2060])
    np.testing.assert_array_equal(np.load(folder / "scores.npy"), np.float32([2.0, 3.0, 2.5, 2.0, 2.0]))
    streams = json.loads((folder / "segments.json").read_text())["streams"]
    assert [(s["first_spike"], s["end_spike"], s["sample_offset"]) for s in streams] == [(0, 3, 0), (3, 5, 2000),
                                                                                         (5, 5, 2800)]
    sorting = si.load(folder / "si")
    assert sorting.get_num_segments() == 2  # SpikeInterface's folder keeps segments up to the last spike
    np.testing.assert_array_equal(sorting.get_unit_spike_train(8, segment_index=0), [900, 1500])
    np.testing.assert_array_equal(sorting.get_unit_spike_train(7, segment_index=1), [60])
