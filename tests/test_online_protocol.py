"""esort_jax.online.protocol and replay: the wire format round-trips and names what is wrong; a
replay into a slow reader delivers every block and returns only once the last one is confirmed
(sockets in a temp folder; every wait bounded)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from esort_jax import ArrayTraces, Recording
from esort_jax.online import protocol
from esort_jax.online.replay import ReplayConfig, replay


def test_block_and_spikes_messages_round_trip():
    samples = np.arange(12, dtype=np.int16).reshape(3, 4)
    frames = protocol.pack_block(7, 1000, samples, 30000.0, stream_t0=12.5, send_time=13.0)
    assert len(frames[0]) == 56
    block = protocol.unpack_block(frames, num_channels=4, dtype="int16")
    assert (block.seq, block.first_sample, block.end_sample, block.stream_t0, block.send_time) == (7, 1000, 1003, 12.5, 13.0)
    np.testing.assert_array_equal(block.samples, samples)
    header = protocol.SpikesHeader(3, 5, 100, 200, 0, 3, 1.0, 2.0, 3.0, 0.001)
    message = protocol.pack_spikes(header, [101, 150], [7, 9], np.float32([2.5, 3.0]))
    assert len(message[1]) == 80 and len(message[2]) == 2 * 20
    got, records = protocol.unpack_spikes(message)
    assert got.num_spikes == 2 and got.last_seq == 5 and got.compute_s == 0.001
    assert records["sample"].tolist() == [101, 150] and records["unit"].tolist() == [7, 9]
    assert protocol.unpack_event(protocol.pack_event("gap", missing_samples=np.int64(5)))["missing_samples"] == 5


@pytest.mark.parametrize("frames, message", [
    (lambda f: f[:1], "2 frames"),
    (lambda f: [f[0][:-1], f[1]], "56"),
    (lambda f: [b"XXXX" + f[0][4:], f[1]], "magic"),
    (lambda f: [f[0], f[1][:-2]], "payload is 46 bytes"),
])
def test_malformed_blocks_are_named(frames, message):
    good = protocol.pack_block(0, 0, np.zeros((3, 4), np.float32), 30000.0)
    with pytest.raises(protocol.ProtocolError, match=message):
        protocol.unpack_block(frames(good))
    with pytest.raises(protocol.ProtocolError, match="4 channels; the network takes 5"):
        protocol.unpack_block(good, num_channels=5)


def test_replay_waits_until_a_slow_service_has_sorted_its_last_block(tmp_path):
    """The fake service reads one block per ms with a tiny queue: most blocks are still queued
    when the replay has sent them all; it must not return (and drop them) before the last one
    is confirmed."""
    context = zmq.Context()
    pull, pub = context.socket(zmq.PULL), context.socket(zmq.PUB)
    pull.setsockopt(zmq.RCVHWM, 10)
    pull.bind(f"ipc://{tmp_path}/in")
    pub.bind(f"ipc://{tmp_path}/out")
    seqs: list[int] = []
    described: list[dict] = []

    def slow_service():
        while len(seqs) < 500 and pull.poll(10_000):
            frames = pull.recv_multipart()
            if protocol.is_stream_message(frames):  # the replay describes its channels first
                described.append(protocol.unpack_stream(frames))
                continue
            block = protocol.unpack_block(frames)
            seqs.append(block.seq)
            time.sleep(0.001)
            done = protocol.SpikesHeader(block.seq, block.seq, block.first_sample, block.end_sample, 0, 1, 0, 0, 0, 0)
            pub.send_multipart(protocol.pack_spikes(done, [], [], []))

    thread = threading.Thread(target=slow_service)
    thread.start()
    recording = Recording(ArrayTraces(np.zeros((16000, 4), np.float32)), 16000.0, np.zeros((4, 2)))
    try:
        summary = replay(recording, f"ipc://{tmp_path}/in", ReplayConfig(block_ms=2, realtime=False, first_seq=3,
                                                                          confirm_timeout_s=30),
                         confirm_endpoint=f"ipc://{tmp_path}/out")
    finally:
        thread.join(30)
        context.destroy(linger=0)
    assert summary["blocks"] == 500 and summary["confirmed"]
    assert seqs == list(range(3, 503))  # every block, in order
    (description,) = described
    np.testing.assert_array_equal(description["channel_positions"], np.zeros((4, 2)))
    assert description["channel_ids"].tolist() == [0, 1, 2, 3] and description["sampling_frequency"] == 16000.0


def test_stream_descriptions_round_trip_and_malformed_ones_are_named():
    positions = np.array([[0.0, 20.0], [16.0, 20.0], [0.0, 40.0]])
    frames = protocol.pack_stream(channel_positions=positions, channel_ids=np.array(["a", "b", "c"]),
                                  sampling_frequency=30000)
    assert protocol.is_stream_message(frames) and not protocol.is_stream_message(
        protocol.pack_block(0, 0, np.zeros((2, 3), np.float32), 30000.0))
    back = protocol.unpack_stream(frames)
    np.testing.assert_array_equal(back["channel_positions"], positions)
    assert back["channel_ids"].tolist() == ["a", "b", "c"] and back["sampling_frequency"] == 30000.0
    assert protocol.unpack_stream(protocol.pack_stream())["channel_positions"] is None
    header = frames[0]
    for bad, message in [([header], "2 frames"), ([header, b"{"], "not JSON"), ([header, b"[1]"], "JSON object"),
                         ([header, b'{"channels": 3}'], "unknown fields"),
                         ([header, b'{"channel_positions": [[0, 1, 2]]}'], r"\[C, 2\]"),
                         ([header, b'{"channel_positions": [[0, NaN]]}'], "finite"),
                         ([header, b'{"channel_ids": 3}'], "must be a list"),
                         ([header, b'{"sampling_frequency": -1}'], "> 0"),
                         ([b"ESRS\x02\x00\x00\x00", frames[1]], "version")]:
        with pytest.raises(protocol.ProtocolError, match=message):
            protocol.unpack_stream(bad)
