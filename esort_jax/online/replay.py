"""A publisher that streams a recording to the online service as an acquisition system would.

    recording, _ = load_recording("rec.h5")       # anything the loader reads
    summary = replay(recording, "tcp://127.0.0.1:5555", ReplayConfig(block_ms=1.0))

Blocks of `block_ms` are sent at real-time pace: the block of samples [a, b) leaves at
t0 + b / fs (when its last sample would have been acquired; t0 = the replay's start, sent in
every header as stream_t0), or as fast as the socket takes them (realtime=false). Each header
carries its send time. Given the service's output endpoint, the replay ends only once the
service has published the spikes of its last block (a block still queued when a process exits
is lost with the connection). Every wait is bounded (send timeout, linger, confirmation
timeout), so a replay never hangs on a service that is gone.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import zmq

from esort_jax.config import require
from esort_jax.online import protocol
from esort_jax.recording import Recording

__all__ = ["ReplayConfig", "replay", "wait_for_service"]


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    """How to stream a recording.

    Attributes:
      block_ms: duration of one block (rounded to whole samples, at least one).
      realtime: pace blocks at the recording's sampling rate; false: as fast as possible.
      dtype: 'float32' (µV) or 'int16' (round(µV / gain_to_uv), clipped).
      gain_to_uv: µV per int16 step.
      start_s, duration_s: the stretch to stream (duration null: to the end).
      first_seq: sequence number of the first block.
      send_timeout_ms: longest wait for the socket to take a block before giving up.
      linger_ms: after the last block, how long queued blocks may still take to be delivered
        (a service that is behind drains its queue; blocks still queued then are lost).
      confirm_timeout_s: with a confirm endpoint, how long to wait for the service to have
        sorted the last block before closing the connection.
      read_samples: samples read from the recording at a time.
      preload: read the whole stretch into memory before the clock starts (no disk read can
        delay a block; needs duration × channels × 4 bytes).
      describe_stream: send a stream description first (the recording's channel positions,
        when all known, and ids, in column order) so the service checks the channel order.
    """

    block_ms: float = 1.0
    realtime: bool = True
    dtype: str = "float32"
    gain_to_uv: float = 0.195
    start_s: float = 0.0
    duration_s: float | None = None
    first_seq: int = 0
    send_timeout_ms: int = 30000
    linger_ms: int = 60000
    confirm_timeout_s: float = 600.0
    read_samples: int = 32768
    preload: bool = False
    describe_stream: bool = True

    def validate(self, where: str = "replay") -> None:
        require(self.block_ms > 0, f"{where}.block_ms", f"must be > 0; got {self.block_ms}")
        require(self.dtype in protocol.DTYPE_CODES, f"{where}.dtype",
                f"must be one of {sorted(protocol.DTYPE_CODES)}; got {self.dtype!r}")
        require(self.gain_to_uv > 0, f"{where}.gain_to_uv", f"must be > 0; got {self.gain_to_uv}")
        require(self.start_s >= 0, f"{where}.start_s", f"must be >= 0; got {self.start_s}")
        require(self.duration_s is None or self.duration_s > 0, f"{where}.duration_s",
                f"must be > 0 or null; got {self.duration_s}")
        require(self.send_timeout_ms > 0, f"{where}.send_timeout_ms", f"must be > 0; got {self.send_timeout_ms}")
        require(self.linger_ms >= 0, f"{where}.linger_ms", f"must be >= 0; got {self.linger_ms}")
        require(self.confirm_timeout_s >= 0, f"{where}.confirm_timeout_s", f"must be >= 0; got {self.confirm_timeout_s}")


def _blocks(recording: Recording, config: ReplayConfig):
    """(first_sample, samples) of every block, read `read_samples` at a time."""
    fs = recording.sampling_frequency
    size = max(int(round(config.block_ms * fs / 1000.0)), 1)
    start = int(round(config.start_s * fs))
    stop = recording.num_samples if config.duration_s is None else min(
        recording.num_samples, start + int(round(config.duration_s * fs)))
    read = stop - start if config.preload else config.read_samples
    for chunk_start in range(start, stop, read):
        chunk = recording.read(chunk_start, min(chunk_start + read, stop))
        for offset in range(0, chunk.shape[0], size):
            yield chunk_start + offset - start, chunk[offset:offset + size]


def _as_wire(samples: np.ndarray, config: ReplayConfig) -> np.ndarray:
    if config.dtype == "float32":
        return samples
    return np.clip(np.round(samples / config.gain_to_uv), -32768, 32767).astype(np.int16)


def replay(recording: Recording, endpoint: str, config: ReplayConfig | None = None, *,
           confirm_endpoint: str | None = None, stop: threading.Event | None = None) -> dict:
    """Stream `recording` to `endpoint` (connect + PUSH). With `confirm_endpoint` (the service's
    output), return only once the service has published the spikes of the last block (or
    confirm_timeout_s passed): a queued block dies with the connection when the process exits.
    Returns blocks/samples sent, t0, how late the sends were against the schedule (ms, p50 /
    max) and whether the last block was confirmed."""
    config = config or ReplayConfig()
    config.validate()
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDTIMEO, config.send_timeout_ms)
    push.setsockopt(zmq.LINGER, config.linger_ms)
    acks = None
    if confirm_endpoint:
        acks = context.socket(zmq.SUB)
        acks.setsockopt(zmq.SUBSCRIBE, protocol.TOPIC_SPIKES)
        acks.setsockopt(zmq.RCVHWM, 0)  # no confirmation is dropped
        acks.setsockopt(zmq.LINGER, 0)
        acks.connect(confirm_endpoint)
    push.connect(endpoint)
    try:
        summary = _send_all(push, recording, config, stop)
        last_seq = config.first_seq + summary["blocks"] - 1
        summary["confirmed"] = bool(acks is not None and summary["blocks"]
                                    and _await_sorted(acks, last_seq, config.confirm_timeout_s))
        return summary
    except zmq.Again as error:
        raise TimeoutError(f"{endpoint}: no service took a block within {config.send_timeout_ms} ms") from error
    finally:
        push.close()  # keeps delivering for linger_ms while the context lives
        if acks is not None:
            acks.close()
        context.term()  # waits for that


def _send_all(push, recording: Recording, config: ReplayConfig, stop) -> dict:
    fs = recording.sampling_frequency
    blocks = _blocks(recording, config)
    if config.preload:
        blocks = iter(list(blocks))  # views of one array read before the clock starts
    if config.describe_stream:
        positions = recording.channel_positions
        push.send_multipart(protocol.pack_stream(
            channel_positions=positions if np.isfinite(positions).all() else None,
            channel_ids=recording.channel_ids, sampling_frequency=fs))
    late_ms, sent, samples, t0 = [], 0, 0, time.time()
    for first, block in blocks:
        if stop is not None and stop.is_set():
            break
        due = t0 + (first + block.shape[0]) / fs
        wait = due - time.time()
        if config.realtime and wait > 0:
            time.sleep(wait)
        late_ms.append(1e3 * (time.time() - due))
        push.send_multipart(protocol.pack_block(config.first_seq + sent, first, _as_wire(block, config), fs,
                                                stream_t0=t0))
        sent, samples = sent + 1, samples + block.shape[0]
    late = np.asarray(late_ms or [0.0])
    return {"blocks": sent, "samples": samples, "stream_t0": t0, "send_late_ms_p50": float(np.median(late)),
            "send_late_ms_max": float(late.max()), "realtime": config.realtime}


def _await_sorted(acks, last_seq: int, timeout_s: float) -> bool:
    """True once a spikes message covering block `last_seq` arrives (False after timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if acks.poll(100):
            header, _ = protocol.unpack_spikes(acks.recv_multipart())
            if header.num_blocks and header.last_seq >= last_seq:
                return True
    return False


def wait_for_service(output_endpoint: str, timeout_s: float = 60.0, context: zmq.Context | None = None) -> dict:
    """Block until the service at `output_endpoint` publishes an event ('ready' at start,
    'status' every few seconds); returns it. TimeoutError after timeout_s."""
    context = context or zmq.Context.instance()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, protocol.TOPIC_EVENT)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(output_endpoint)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if sock.poll(100):
                return protocol.unpack_event(sock.recv_multipart())
        raise TimeoutError(f"{output_endpoint}: no event from the service within {timeout_s:g} s")
    finally:
        sock.close()
