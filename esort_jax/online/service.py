"""The online sorting service: blocks in over ZeroMQ, spikes out, faults reported, not crashed on.

    service = SortingService(sorter, ServiceConfig(), run_dir)    # sorter warmed up
    with stop_on_signals() as stop:                                # SIGINT / SIGTERM set `stop`
        summary = service.run(stop)                                # spikes so far -> run_dir/sorting

Sockets (wire format: esort_jax.online.protocol): the service binds a PULL socket for blocks and
a PUB socket for spikes and events. Each wake-up drains what has arrived (up to
`coalesce_blocks` messages) and sorts consecutive blocks in one push, so a sorter that fell
behind catches up with bigger, more efficient blocks instead of queueing ever more.

Faults:
  - malformed message, wrong channel count, dtype or sampling rate, NaN/inf: the message is
    dropped, an 'error' event names it; the data it held is missing, so the next block is a gap;
  - channel order: a publisher that describes its stream (protocol.pack_stream: its channels'
    positions and/or ids, column by column) has its columns checked against the network's
    (online.channel_map) and put into the network's order ('stream' event, reordered=true/false);
    a description that does not match is refused ('error' event) and so is every block after
    it until a matching description arrives; with `require_stream_description`, blocks are
    refused until one has matched. A description holds until the next (send it again after a
    restart when the channels may have changed);
  - gap (a sequence number skipped, or first_sample not where the last block ended): the
    stream so far is flushed (its last spikes decided as if the recording ended there, as
    the offline sort of that stretch would), the history reset, a 'gap' event says where;
  - publisher restart (sequence number going back, e.g. to 0): the same, as a 'restart' event;
  - falling behind: every block's lag (publish time - its send time, less the smallest such
    difference of the stream, so that an offset between the publisher's clock and this one
    cancels; `clock_offset_ms` in 'status' events, a warning above 50 ms) is measured; 'status'
    events report it each `status_every_s`, with behind=true above `lag_warn_ms`; with
    `max_lag_ms` set, blocks older than that when dequeued are dropped ('dropped' event, then
    a gap) so the sorter jumps back to the present;
  - SIGINT/SIGTERM (or the stop event): the stream is flushed and every spike published so far
    is written atomically to `run_dir/sorting` (esort_jax.online.spike_log).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import signal
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from esort_jax.config import require
from esort_jax.online import protocol
from esort_jax.online.channel_map import ChannelMapError, NothingToCompare, channel_order
from esort_jax.online.sorter import OnlineSorter, SpikeBatch
from esort_jax.online.spike_log import SpikeLog

__all__ = ["ServiceConfig", "SortingService", "stop_on_signals"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """Sockets and fault handling of the online service.

    Attributes:
      input_endpoint: where blocks arrive (bound PULL): tcp://127.0.0.1:PORT or ipc://PATH.
      output_endpoint: where spikes and events go (bound PUB).
      input_dtype: the samples' dtype on the wire, 'float32' (µV) or 'int16' (times the gain).
      poll_ms: longest wait for a message before checking for a stop request.
      coalesce_blocks: most messages sorted in one push (1: one push per block).
      max_lag_ms: drop blocks older than this (ms since their send time) when dequeued; null: never.
      lag_warn_ms: 'status' events say behind=true when a block's lag exceeded this.
      status_every_s: period of 'status' events.
      write_spikeinterface: also write the SpikeInterface folder at shutdown (sorting/si).
      require_stream_description: sort only after a stream description matched the network's
        channels (otherwise an undescribed stream is taken to be in the network's order).
      channel_tolerance_um: how far a described channel position may be from the network's.
    """

    input_endpoint: str = "tcp://127.0.0.1:5555"
    output_endpoint: str = "tcp://127.0.0.1:5556"
    input_dtype: str = "float32"
    poll_ms: int = 50
    coalesce_blocks: int = 64
    max_lag_ms: float | None = None
    lag_warn_ms: float = 20.0
    status_every_s: float = 1.0
    write_spikeinterface: bool = True
    require_stream_description: bool = False
    channel_tolerance_um: float = 1.0

    def validate(self, where: str = "service") -> None:
        for key in ("input_endpoint", "output_endpoint"):
            value = getattr(self, key)
            require(value.startswith(("tcp://", "ipc://", "inproc://")), f"{where}.{key}",
                    f"must be tcp://HOST:PORT, ipc://PATH or inproc://NAME; got {value!r}")
        require(self.input_dtype in protocol.DTYPE_CODES, f"{where}.input_dtype",
                f"must be one of {sorted(protocol.DTYPE_CODES)}; got {self.input_dtype!r}")
        require(self.poll_ms >= 1, f"{where}.poll_ms", f"must be >= 1; got {self.poll_ms}")
        require(self.coalesce_blocks >= 1, f"{where}.coalesce_blocks", f"must be >= 1; got {self.coalesce_blocks}")
        require(self.max_lag_ms is None or self.max_lag_ms > 0, f"{where}.max_lag_ms",
                f"must be > 0 or null; got {self.max_lag_ms}")
        require(self.status_every_s > 0, f"{where}.status_every_s", f"must be > 0; got {self.status_every_s}")
        require(self.channel_tolerance_um >= 0, f"{where}.channel_tolerance_um",
                f"must be >= 0; got {self.channel_tolerance_um}")


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGINT, signal.SIGTERM)):
    """An Event set by SIGINT/SIGTERM while the block runs (main thread only); the previous
    handlers are restored afterwards."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda number, frame: stop.set()) for s in signals}
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class SortingService:
    """The socket loop around an OnlineSorter (see the module doc)."""

    def __init__(self, sorter: OnlineSorter, config: ServiceConfig, run_dir: str | Path,
                 context: zmq.Context | None = None):
        config.validate()
        self.sorter, self.config = sorter, config
        self.context = context or zmq.Context.instance()
        self.spikes = SpikeLog(run_dir, sorter.unit_ids, sorter.sampling_frequency)
        integer_ids = np.issubdtype(sorter.unit_ids.dtype, np.integer)
        self._wire_units = sorter.unit_ids.astype(np.int64) if integer_ids else np.arange(sorter.unit_ids.size)
        self.counts = {"blocks": 0, "samples": 0, "spikes": 0, "errors": 0, "gaps": 0, "restarts": 0, "dropped": 0}
        self._expected: tuple[int, int] | None = None  # (next seq, next first_sample)
        self._stream_t0 = 0.0
        self._lags_ms: list[float] = []
        self._clock_offset_ms: float | None = None  # smallest (receive - send time) of the stream
        self._warned_clock = False
        self._last_status = time.monotonic()
        self._channels = "undescribed"  # | "accepted" | "refused" (the last stream description)
        self._descriptions = {"checked": 0, "unchecked": 0}  # accepted stream descriptions
        self._channel_index: np.ndarray | None = None  # stream column of each network channel

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, max_seconds: float | None = None) -> dict:
        """Serve until `stop` is set (or max_seconds pass); then flush and write the sorting
        folder. Returns the counts and the folder's path."""
        pull, pub = self.context.socket(zmq.PULL), self.context.socket(zmq.PUB)
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            pub.setsockopt(zmq.SNDHWM, 100_000)  # a slow subscriber gets its messages late, not lost
            for sock, endpoint in ((pull, self.config.input_endpoint), (pub, self.config.output_endpoint)):
                sock.setsockopt(zmq.LINGER, 200)
                sock.bind(endpoint)
            self._pub = pub
            self._event("ready", unit_ids=self.sorter.unit_ids.tolist(), num_channels=self.sorter.num_channels,
                        sampling_frequency=self.sorter.sampling_frequency, final_after=self.sorter.final_after,
                        input_dtype=self.config.input_dtype, threshold=self.sorter.threshold,
                        channel_positions_known=self.sorter.channel_positions is not None,
                        require_stream_description=self.config.require_stream_description)
            gc.collect()
            gc.freeze()  # objects made so far (JAX, the model) leave the collector's scans: shorter pauses
            poller = zmq.Poller()
            poller.register(pull, zmq.POLLIN)
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                if poller.poll(self.config.poll_ms):
                    self._process(self._drain(pull))
                self._maybe_status()
            return self._shutdown()
        finally:
            gc.unfreeze()
            pull.close()
            pub.close()

    def _drain(self, pull) -> list:
        messages = []
        while len(messages) < self.config.coalesce_blocks:
            try:
                messages.append(pull.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
        return messages

    def _process(self, messages: list) -> None:
        """Decode, check continuity, and sort runs of consecutive blocks one push each."""
        group: list[protocol.BlockMessage] = []
        for frames in messages:
            if protocol.is_stream_message(frames):
                if group:  # blocks before it were read under the previous description
                    self._sort(group)
                    group = []
                self._describe(frames)
                continue
            block = self._decode(frames)
            if block is None or self._too_old(block):
                continue
            kind = self._continuity(block)
            if kind != "next" and group:
                self._sort(group)
                group = []
            if kind != "next":
                self._new_stream(kind, block)
            group.append(block)
            self._expected = (block.seq + 1, block.end_sample)
        if group:
            self._sort(group)

    def _decode(self, frames) -> protocol.BlockMessage | None:
        try:
            block = protocol.unpack_block(frames, num_channels=self.sorter.num_channels, dtype=self.config.input_dtype)
            fs = self.sorter.sampling_frequency
            if abs(block.sampling_frequency - fs) > 1e-6 * fs:
                raise protocol.ProtocolError(f"seq {block.seq}: sampled at {block.sampling_frequency:g} Hz; "
                                             f"the network at {fs:g} Hz")
            if not np.isfinite(block.samples).all():
                raise protocol.ProtocolError(f"seq {block.seq}: samples contain NaN or inf")
            if self._channels == "refused" or (self._channels == "undescribed"
                                               and self.config.require_stream_description):
                raise protocol.ProtocolError(f"seq {block.seq}: " + (
                    "the stream's channels do not match the network's (its description was refused)"
                    if self._channels == "refused" else "no stream description has been received "
                    "(service.require_stream_description)"))
            if self._channel_index is not None:
                return dataclasses.replace(block, samples=block.samples[:, self._channel_index])
            return block
        except protocol.ProtocolError as error:
            self.counts["errors"] += 1
            log.warning("dropped a message: %s", error)
            self._event("error", message=str(error))
            return None

    def _describe(self, frames) -> None:
        """A stream description: check its channels against the network's, set the column order."""
        try:
            description = protocol.unpack_stream(frames)
            fs = description["sampling_frequency"]
            if fs is not None and abs(fs - self.sorter.sampling_frequency) > 1e-6 * fs:
                raise protocol.ProtocolError(f"sampled at {fs:g} Hz; the network at {self.sorter.sampling_frequency:g} Hz")
            index = channel_order(self.sorter.channel_positions, self.sorter.channel_ids,
                                  description["channel_positions"], description["channel_ids"],
                                  tolerance_um=self.config.channel_tolerance_um)
            checked = True
        except NothingToCompare as error:
            if self.config.require_stream_description:  # it asks for a description that matched
                return self._refuse_description(f"it cannot be checked ({error})")
            index, checked = None, False
            log.warning("stream description accepted unchecked: %s", error)
        except (protocol.ProtocolError, ChannelMapError) as error:
            return self._refuse_description(str(error))
        self._channels, self._channel_index = "accepted", index
        self._descriptions["checked" if checked else "unchecked"] += 1
        self._event("stream", checked=checked, reordered=index is not None)
        log.info("stream description accepted (checked: %s, reordered: %s)", checked, index is not None)

    def _refuse_description(self, reason: str) -> None:
        self._channels, self._channel_index = "refused", None
        self.counts["errors"] += 1
        log.warning("stream description refused: %s", reason)
        self._event("error", message=f"stream description refused: {reason}")

    def _too_old(self, block: protocol.BlockMessage) -> bool:
        """Drop policy: a block older than max_lag_ms is skipped (the next one is then a gap)."""
        if self.config.max_lag_ms is None:
            return False
        lag_ms = self._lag_ms(time.time(), block.send_time)
        if lag_ms <= self.config.max_lag_ms:
            return False
        self.counts["dropped"] += 1
        self._event("dropped", seq=block.seq, first_sample=block.first_sample, lag_ms=lag_ms)
        return True

    def _continuity(self, block: protocol.BlockMessage) -> str:
        if self._expected is None:
            return "start"
        seq, sample = self._expected
        if block.seq < seq:
            return "restart"
        return "next" if (block.seq, block.first_sample) == (seq, sample) else "gap"

    def _new_stream(self, kind: str, block: protocol.BlockMessage) -> None:
        """End the current stream (flush its spikes), report why, start anew at this block."""
        if self._expected is not None:
            seq, sample = self._expected
            self._publish(self.sorter.flush(), [], compute_s=0.0)
            self.counts["gaps" if kind == "gap" else "restarts"] += 1
            self._event(kind, expected_seq=seq, got_seq=block.seq, expected_sample=sample,
                        got_sample=block.first_sample, missing_samples=block.first_sample - sample)
            log.warning("%s: expected seq %d at sample %d, got seq %d at sample %d", kind, seq, sample,
                        block.seq, block.first_sample)
        self.sorter.reset(block.first_sample)
        self._stream_t0 = block.stream_t0
        if kind in ("start", "restart"):  # perhaps another publisher, another clock
            self._clock_offset_ms = None
        self.spikes.begin_segment(block.first_sample, block.seq, kind)

    def _sort(self, group: list[protocol.BlockMessage]) -> None:
        samples = group[0].samples if len(group) == 1 else np.concatenate([b.samples for b in group])
        started = time.perf_counter()
        batch = self.sorter.push(samples)
        compute_s = time.perf_counter() - started
        self.counts["blocks"] += len(group)
        self.counts["samples"] += samples.shape[0]
        self.spikes.extend_segment(group[-1].end_sample, group[-1].seq)
        self._publish(batch, group, compute_s)

    def _publish(self, batch: SpikeBatch, group: list, compute_s: float) -> None:
        now = time.time()
        first, last = (group[0], group[-1]) if group else (None, None)
        header = protocol.SpikesHeader(
            first_seq=first.seq if first else 0, last_seq=last.seq if last else 0,
            first_sample=first.first_sample if first else 0, end_sample=last.end_sample if last else 0,
            num_spikes=len(batch), num_blocks=len(group), stream_t0=self._stream_t0,
            send_time=last.send_time if last else 0.0, publish_time=now, compute_s=compute_s)
        self._pub.send_multipart(protocol.pack_spikes(header, batch.samples, self._wire_units[batch.unit_indices],
                                                      batch.scores))
        self.spikes.append(batch.samples, batch.unit_indices, batch.scores)
        self.counts["spikes"] += len(batch)
        self._lags_ms.extend(self._lag_ms(now, b.send_time) for b in group)

    def _lag_ms(self, now: float, send_time: float) -> float:
        """How much later than the stream's most punctual block this one is handled: (now - send
        time) minus its smallest value so far. The publisher's send times come from its clock;
        the offset between the two clocks (another machine, a clock set wrong) cancels, and on
        one machine it is the transport time of the fastest block (~0.1 ms)."""
        raw = 1e3 * (now - send_time)
        if self._clock_offset_ms is None or raw < self._clock_offset_ms:
            self._clock_offset_ms = raw
            if abs(raw) > 50.0 and not self._warned_clock:
                self._warned_clock = True
                log.warning("the publisher's clock differs from this machine's by about %.0f ms: block lags are "
                            "measured relative to the stream's most punctual block", -raw)
        return raw - self._clock_offset_ms

    def _event(self, kind: str, **fields) -> None:
        self._pub.send_multipart(protocol.pack_event(kind, **fields))

    def _maybe_status(self) -> None:
        if time.monotonic() - self._last_status < self.config.status_every_s:
            return
        self._last_status = time.monotonic()
        lags = np.asarray(self._lags_ms or [np.nan])
        self._lags_ms = []
        worst = float(np.nanmax(lags)) if np.isfinite(lags).any() else None
        behind = worst is not None and worst > self.config.lag_warn_ms
        if behind:
            log.warning("behind real time: block lag up to %.1f ms", worst)
        self._event("status", **self.counts, lag_ms_p50=None if worst is None else float(np.nanmedian(lags)),
                    lag_ms_max=worst, behind=behind, clock_offset_ms=self._clock_offset_ms)

    def _shutdown(self) -> dict:
        """Flush, write the sorting folder; the counts plus `complete` (every message that arrived
        was sorted: no error, gap or drop) and `channels_checked` (stream descriptions were
        accepted and every one was checked against the network's channels), so a summary never
        hides lost data or an unchecked channel order."""
        if self._expected is not None:
            self._publish(self.sorter.flush(), [], compute_s=0.0)
        quality = {"complete": not (self.counts["errors"] or self.counts["gaps"] or self.counts["dropped"]),
                   "channels_checked": self._descriptions["checked"] > 0 and not self._descriptions["unchecked"]}
        folder = self.spikes.write_sorting(spikeinterface=self.config.write_spikeinterface,
                                           extra={"counts": self.counts, **quality})
        self._event("stopped", **self.counts, **quality, sorting=str(folder))
        log.info("stopped: %s; spikes written to %s", self.counts, folder)
        if not quality["complete"]:
            log.warning("the sorting is incomplete: %d messages refused, %d gaps, %d blocks dropped (segments.json "
                        "lists the stretches sorted)", self.counts["errors"], self.counts["gaps"], self.counts["dropped"])
        return {**self.counts, **quality, "sorting": str(folder)}
