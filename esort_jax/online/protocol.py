"""The wire format of the online sorting service (version 1): ZeroMQ multipart messages,
little-endian, so an acquisition system or an Open Ephys / SpikeGLX bridge can feed it.

Blocks in (the service binds a PULL socket; publishers connect a PUSH socket), one message per
block of consecutive samples, two frames:

  frame 0, block header, 56 bytes (struct "<4sHHQqIIddd"):
    offset  type     field
    0       char[4]  magic "ESRT"
    4       uint16   version (1)
    6       uint16   dtype of the samples: 1 = int16 (converted with the service's gain), 2 = float32 µV
    8       uint64   seq: message number of this stream, +1 per block, 0 at a (re)start
    16      int64    first_sample: sample index of the block's first row in the stream
    24      uint32   num_samples n
    28      uint32   num_channels C
    32      float64  sampling_frequency (Hz)
    40      float64  stream_t0: wall-clock time (Unix s) at which sample 0 was acquired; 0 if unknown
    48      float64  send_time: wall-clock time (Unix s) the block was sent
  frame 1, the samples: n × C values of dtype, time-major (row = one sample of all channels).

A stream description (optional, before the first block and again after a restart; on the same
socket), two frames, so the service can check the channels' order and reorder them:

  frame 0, 8 bytes (struct "<4sHH"): magic "ESRS", version (1), reserved (0)
  frame 1, UTF-8 JSON: {"channel_positions": [[x, y] µm per column] or null,
                        "channel_ids": [id per column] or null,
                        "sampling_frequency": Hz or null}

Out (the service binds a PUB socket), the first frame is the topic:

  [b"spikes", header, records]   after every processed batch of blocks (also with no spikes)
    header, 80 bytes (struct "<4sHHQQqqIIdddd"): magic "ESSP", version, reserved, first_seq,
      last_seq (the blocks this batch covered), first_sample, end_sample (samples covered,
      end exclusive), num_spikes, num_blocks, stream_t0, send_time of the last block,
      publish_time, compute_s (seconds in the sorter)
    records: num_spikes × 20 bytes, sorted by (sample, unit): int64 sample (absolute, in the
      stream's numbering), int64 unit (the unit id; the unit's index when the ids are not
      integers -- the 'ready' event lists them), float32 score (smoothed probability at the peak)
  [b"event", JSON]   ready, status (every few s: lag, counts), gap, restart, dropped, error, stopped

A spike in a batch is final: it is never retracted or repeated. Its latency is
publish_time - (stream_t0 + sample / sampling_frequency).
"""

from __future__ import annotations

import dataclasses
import json
import struct
import time

import numpy as np

__all__ = [
    "VERSION", "DTYPES", "SPIKE_RECORD", "ProtocolError", "BlockMessage", "SpikesHeader",
    "pack_block", "unpack_block", "pack_stream", "unpack_stream", "is_stream_message", "pack_spikes", "unpack_spikes", "pack_event", "unpack_event",
]

VERSION = 1
BLOCK_MAGIC, SPIKES_MAGIC, STREAM_MAGIC = b"ESRT", b"ESSP", b"ESRS"
BLOCK_HEADER = struct.Struct("<4sHHQqIIddd")
STREAM_HEADER = struct.Struct("<4sHH")
SPIKES_HEADER = struct.Struct("<4sHHQQqqIIdddd")
DTYPES = {1: np.dtype("<i2"), 2: np.dtype("<f4")}  # wire code -> dtype
DTYPE_CODES = {"int16": 1, "float32": 2}
SPIKE_RECORD = np.dtype([("sample", "<i8"), ("unit", "<i8"), ("score", "<f4")])  # packed, 20 bytes
TOPIC_SPIKES, TOPIC_EVENT = b"spikes", b"event"


class ProtocolError(ValueError):
    """A message does not follow the wire format (the message names what is wrong)."""


@dataclasses.dataclass(frozen=True, eq=False)
class BlockMessage:
    """One decoded block: header fields and the samples [n, C] (a read-only view)."""

    seq: int
    first_sample: int
    sampling_frequency: float
    stream_t0: float
    send_time: float
    samples: np.ndarray

    @property
    def end_sample(self) -> int:
        return self.first_sample + self.samples.shape[0]


@dataclasses.dataclass(frozen=True)
class SpikesHeader:
    first_seq: int
    last_seq: int
    first_sample: int
    end_sample: int
    num_spikes: int
    num_blocks: int
    stream_t0: float
    send_time: float
    publish_time: float
    compute_s: float


def pack_block(seq: int, first_sample: int, samples: np.ndarray, sampling_frequency: float, *,
               stream_t0: float = 0.0, send_time: float | None = None) -> list[bytes]:
    """The two frames of a block message (samples [n, C], int16 or float32)."""
    samples = np.asarray(samples)
    code = DTYPE_CODES.get(samples.dtype.name)
    if code is None or samples.ndim != 2:
        raise ProtocolError(f"samples must be [n, C] int16 or float32; got {samples.dtype} {samples.shape}")
    header = BLOCK_HEADER.pack(BLOCK_MAGIC, VERSION, code, seq, first_sample, samples.shape[0], samples.shape[1],
                               sampling_frequency, stream_t0, time.time() if send_time is None else send_time)
    return [header, np.ascontiguousarray(samples, DTYPES[code]).tobytes()]


def unpack_block(frames: list, *, num_channels: int | None = None, dtype: str | None = None) -> BlockMessage:
    """Decode a block message; ProtocolError (saying what is wrong) unless it is well formed and
    has `num_channels` channels and the `dtype` ('int16' / 'float32') when given."""
    if len(frames) != 2:
        raise ProtocolError(f"a block message has 2 frames (header, samples); got {len(frames)}")
    header, payload = bytes(frames[0]), frames[1]
    if len(header) != BLOCK_HEADER.size:
        raise ProtocolError(f"block header is {len(header)} bytes; expected {BLOCK_HEADER.size}")
    magic, version, code, seq, first, n, channels, fs, t0, sent = BLOCK_HEADER.unpack(header)
    if magic != BLOCK_MAGIC or version != VERSION:
        raise ProtocolError(f"not a version-{VERSION} block (magic {magic!r}, version {version})")
    if code not in DTYPES:
        raise ProtocolError(f"seq {seq}: unknown dtype code {code} (1 = int16, 2 = float32)")
    if dtype is not None and DTYPES[code] != np.dtype(dtype):
        raise ProtocolError(f"seq {seq}: samples are {DTYPES[code].name}; this service takes {dtype}")
    if num_channels is not None and channels != num_channels:
        raise ProtocolError(f"seq {seq}: block has {channels} channels; the network takes {num_channels}")
    expected = n * channels * DTYPES[code].itemsize
    if len(payload) != expected:
        raise ProtocolError(f"seq {seq}: payload is {len(payload)} bytes; {n} x {channels} {DTYPES[code].name} "
                            f"is {expected}")
    samples = np.frombuffer(payload, DTYPES[code]).reshape(n, channels)
    return BlockMessage(seq, first, fs, t0, sent, samples)


def pack_stream(*, channel_positions=None, channel_ids=None, sampling_frequency: float | None = None) -> list[bytes]:
    """The two frames of a stream description (module doc): the publisher's channels in its
    column order."""
    description = {
        "channel_positions": None if channel_positions is None else np.asarray(channel_positions, float)[:, :2].tolist(),
        "channel_ids": None if channel_ids is None else np.asarray(channel_ids).tolist(),
        "sampling_frequency": None if sampling_frequency is None else float(sampling_frequency),
    }
    return [STREAM_HEADER.pack(STREAM_MAGIC, VERSION, 0), json.dumps(description).encode()]


def is_stream_message(frames: list) -> bool:
    """True when `frames` look like a stream description (its magic), not a block."""
    return len(frames) >= 1 and bytes(frames[0])[:4] == STREAM_MAGIC


def unpack_stream(frames: list) -> dict:
    """The description of pack_stream: channel_positions ([C, 2] float array or None),
    channel_ids ([C] array or None), sampling_frequency (float or None); ProtocolError unless
    well formed."""
    if len(frames) != 2 or len(bytes(frames[0])) != STREAM_HEADER.size:
        raise ProtocolError("a stream description has 2 frames: an 8-byte header, JSON")
    magic, version, _ = STREAM_HEADER.unpack(bytes(frames[0]))
    if magic != STREAM_MAGIC or version != VERSION:
        raise ProtocolError(f"not a version-{VERSION} stream description (magic {magic!r}, version {version})")
    try:
        description = json.loads(bytes(frames[1]))
    except ValueError as error:
        raise ProtocolError(f"stream description is not JSON: {error}") from None
    if not isinstance(description, dict):
        raise ProtocolError("stream description must be a JSON object")
    unknown = set(description) - {"channel_positions", "channel_ids", "sampling_frequency"}
    if unknown:
        raise ProtocolError(f"stream description has unknown fields {sorted(unknown)}")
    positions, ids, fs = (description.get(k) for k in ("channel_positions", "channel_ids", "sampling_frequency"))
    try:
        positions = None if positions is None else np.asarray(positions, float)
        fs = None if fs is None else float(fs)
    except (TypeError, ValueError):
        raise ProtocolError("stream description: channel_positions must be numbers [C, 2], "
                            "sampling_frequency a number") from None
    if positions is not None and (positions.ndim != 2 or positions.shape[1] != 2 or not np.isfinite(positions).all()):
        raise ProtocolError(f"stream description: channel_positions must be finite [C, 2]; got shape {positions.shape}")
    if ids is not None and not isinstance(ids, list):
        raise ProtocolError("stream description: channel_ids must be a list")
    if fs is not None and not (np.isfinite(fs) and fs > 0):
        raise ProtocolError(f"stream description: sampling_frequency must be > 0; got {fs}")
    return {"channel_positions": positions, "channel_ids": None if ids is None else np.asarray(ids),
            "sampling_frequency": fs}


def pack_spikes(header: SpikesHeader, samples, units, scores) -> list[bytes]:
    """The three frames of a spikes message."""
    records = np.zeros(len(samples), SPIKE_RECORD)
    records["sample"], records["unit"], records["score"] = samples, units, scores
    h = header
    packed = SPIKES_HEADER.pack(SPIKES_MAGIC, VERSION, 0, h.first_seq, h.last_seq, h.first_sample, h.end_sample,
                                len(records), h.num_blocks, h.stream_t0, h.send_time, h.publish_time, h.compute_s)
    return [TOPIC_SPIKES, packed, records.tobytes()]


def unpack_spikes(frames: list) -> tuple[SpikesHeader, np.ndarray]:
    """(header, records of SPIKE_RECORD) of a spikes message."""
    if len(frames) != 3 or bytes(frames[0]) != TOPIC_SPIKES:
        raise ProtocolError("a spikes message has 3 frames: b'spikes', header, records")
    magic, version, _, *fields = SPIKES_HEADER.unpack(bytes(frames[1]))
    if magic != SPIKES_MAGIC or version != VERSION:
        raise ProtocolError(f"not a version-{VERSION} spikes message (magic {magic!r}, version {version})")
    header = SpikesHeader(*fields)
    records = np.frombuffer(bytes(frames[2]), SPIKE_RECORD)
    if records.size != header.num_spikes:
        raise ProtocolError(f"spikes message holds {records.size} records; its header says {header.num_spikes}")
    return header, records


def pack_event(kind: str, **fields) -> list[bytes]:
    """An event message: topic b'event' and a JSON object with 'event' and 'time'."""
    return [TOPIC_EVENT, json.dumps({"event": kind, "time": time.time(), **fields}, default=_plain).encode()]


def unpack_event(frames: list) -> dict:
    if len(frames) != 2 or bytes(frames[0]) != TOPIC_EVENT:
        raise ProtocolError("an event message has 2 frames: b'event', JSON")
    return json.loads(bytes(frames[1]))


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
