"""The service's spikes so far: appended to a file as they are published (memory bounded however
long it runs) and turned into a sorting folder, atomically, when it stops.

    <run>/spikes.partial        records (int64 sample, int64 unit index, float32 score), appended
    <run>/sorting/              written at shutdown, complete or absent (esort_jax.io.atomic):
        sorting.npz             esort_jax.io.read_sorting_npz reads it
        scores.npy              [S] float32, aligned with the sorting's spikes
        segments.json           the contiguous stretches sorted (gaps and restarts split them)
        si/                     a SpikeInterface sorting folder (spikeinterface.load), optional

A publisher restart starts a new numbering of samples (a new stream). With more than one
stream, si/ has one SpikeInterface segment per stream in the publisher's numbering, and
sorting.npz puts the streams one after another on one timeline: stream i's samples plus its
`sample_offset` (segments.json `streams`), so no two streams' spikes share sample numbers.
(Streams after the last spike hold none and are not segments of si/: SpikeInterface's folder
format keeps segments up to the last spike.)
"""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path

import numpy as np

from esort_jax.io import write_sorting_npz
from esort_jax.io.atomic import atomic_folder, to_jsonable
from esort_jax.online.protocol import SPIKE_RECORD
from esort_jax.recording import Sorting

__all__ = ["SpikeLog"]


class SpikeLog:
    """Append-only spike storage of one service run."""

    def __init__(self, folder: str | Path, unit_ids, sampling_frequency: float):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.unit_ids = np.asarray(unit_ids)
        self.sampling_frequency = float(sampling_frequency)
        self.path = self.folder / "spikes.partial"
        self._file = open(self.path, "wb")
        self.num_spikes = 0
        self.segments: list[dict] = []
        # Writes happen on a thread of their own: a write can wait for the disk (writeback,
        # journal) for tens of milliseconds, which must not delay the next block's spikes.
        self._pending: queue.SimpleQueue = queue.SimpleQueue()
        self._write_error: BaseException | None = None
        self._writer = threading.Thread(target=self._write_loop, name="spike-log-writer", daemon=True)
        self._writer.start()

    def append(self, samples, unit_indices, scores) -> None:
        """Add spikes. The writer thread writes and flushes them to the file at once, so a
        crash loses at most the spikes of the last moments; a write error is raised here (on
        the next call) and by write_sorting."""
        self._raise_write_error()
        if len(samples) == 0:
            return
        records = np.zeros(len(samples), SPIKE_RECORD)
        records["sample"], records["unit"], records["score"] = samples, unit_indices, scores
        self._pending.put(records.tobytes())
        self.num_spikes += len(records)

    def _write_loop(self) -> None:
        while (chunk := self._pending.get()) is not None:
            try:
                self._file.write(chunk)
                if self._pending.empty():
                    self._file.flush()
            except BaseException as error:  # reported by append / write_sorting
                self._write_error = error
                return

    def _raise_write_error(self) -> None:
        if self._write_error is not None:
            raise OSError(f"writing spikes to {self.path} failed: {self._write_error}") from self._write_error

    def close(self) -> None:
        """Write what is queued and close the file (write_sorting calls it)."""
        if self._writer.is_alive():
            self._pending.put(None)
            self._writer.join()
        self._file.close()
        self._raise_write_error()

    def begin_segment(self, first_sample: int, first_seq: int, reason: str) -> None:
        self.segments.append({"first_sample": int(first_sample), "end_sample": int(first_sample),
                              "first_seq": int(first_seq), "last_seq": int(first_seq), "began": reason,
                              "spikes_before": int(self.num_spikes)})

    def extend_segment(self, end_sample: int, last_seq: int) -> None:
        if self.segments:
            self.segments[-1].update(end_sample=int(end_sample), last_seq=int(last_seq))

    def write_sorting(self, name: str = "sorting", *, spikeinterface: bool = True, extra: dict | None = None) -> Path:
        """Write every spike logged so far as the sorting folder `<folder>/<name>` (atomic,
        replacing an older one); the partial file is removed afterwards."""
        self.close()
        records = np.fromfile(self.path, SPIKE_RECORD)
        streams = self._streams(records.size)
        samples = records["sample"].copy()
        for stream in streams:
            samples[stream["first_spike"]:stream["end_spike"]] += stream["sample_offset"]
        sorting = Sorting(samples, records["unit"], self.unit_ids, self.sampling_frequency)
        order = np.lexsort((records["unit"], samples))
        out = self.folder / name
        with atomic_folder(out, overwrite=True) as tmp:
            write_sorting_npz(tmp / "sorting.npz", sorting)
            np.save(tmp / "scores.npy", records["score"][order])
            info = {"segments": self.segments, "streams": streams, "num_spikes": int(records.size), **(extra or {})}
            (tmp / "segments.json").write_text(json.dumps(to_jsonable(info), indent=2))
            if spikeinterface:
                from esort_jax.io.spikeinterface import to_spikeinterface_sorting

                parts = [Sorting(records["sample"][s["first_spike"]:s["end_spike"]],
                                 records["unit"][s["first_spike"]:s["end_spike"]], self.unit_ids,
                                 self.sampling_frequency) for s in streams]
                to_spikeinterface_sorting(parts[0] if len(parts) == 1 else parts).save(folder=tmp / "si")
        self.path.unlink(missing_ok=True)
        return out

    def _streams(self, num_records: int) -> list[dict]:
        """The streams (a restart begins the next): their spikes' record range, sample range in
        the publisher's numbering and the offset that puts them after the previous stream."""
        starts = [i for i, segment in enumerate(self.segments) if i == 0 or segment["began"] == "restart"]
        if not starts:
            return [{"first_spike": 0, "end_spike": int(num_records), "first_sample": 0, "end_sample": 0,
                     "sample_offset": 0}]
        streams, timeline_end = [], None
        for a, b in zip(starts, starts[1:] + [len(self.segments)]):
            mine = self.segments[a:b]
            first = min(s["first_sample"] for s in mine)
            end = max(s["end_sample"] for s in mine)
            offset = 0 if timeline_end is None else max(0, timeline_end - first)
            streams.append({"first_spike": mine[0]["spikes_before"],
                            "end_spike": self.segments[b]["spikes_before"] if b < len(self.segments) else int(num_records),
                            "first_sample": first, "end_sample": end, "sample_offset": offset})
            timeline_end = end + offset
        return streams
