"""Acquisition formats read through SpikeInterface's extractors: SpikeGLX, Open Ephys, NWB, and
raw binary files with a probe file.

    si_recording = open_extractor("/data/run_g0", "spikeglx")                 # lazy
    si_recording = open_extractor("rec.dat", "binary", binary=BinaryOptions(
        sampling_frequency=30000, num_channels=384, dtype="int16", probe="probe.json"))

`detect_extractor_format(path)` recognises the self-describing ones (SpikeGLX folders, Open
Ephys folders, .nwb files); a raw binary file never describes itself, so it needs
format='binary' and its `BinaryOptions`. `esort_jax.io.load_recording` uses both.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from esort_jax.config import require
from esort_jax.io.folder import RecordingFormatError

__all__ = [
    "EXTRACTOR_FORMATS",
    "BinaryOptions",
    "detect_extractor_format",
    "open_extractor",
    "attach_probe",
]

EXTRACTOR_FORMATS = ("spikeglx", "openephys", "nwb", "binary")


@dataclasses.dataclass(frozen=True)
class BinaryOptions:
    """What a raw binary file (samples × channels, time-major) does not say about itself.

    Attributes:
      sampling_frequency: Hz (required).
      num_channels: channels interleaved in the file (required).
      dtype: sample type, e.g. 'int16', 'float32'.
      probe: a probeinterface JSON (.json) or a .prb file giving the channel geometry (required
        unless channel positions do not matter; without it the channels get no positions).
      gain_to_uv, offset_to_uv: µV = raw · gain + offset.
      file_offset: header bytes before the first sample.
    """

    sampling_frequency: float | None = None
    num_channels: int | None = None
    dtype: str = "int16"
    probe: str | None = None
    gain_to_uv: float = 1.0
    offset_to_uv: float = 0.0
    file_offset: int = 0

    def validate(self, where: str = "binary") -> None:
        require(
            self.sampling_frequency is None or self.sampling_frequency > 0, f"{where}.sampling_frequency",
            f"must be > 0 Hz; got {self.sampling_frequency}",
        )
        require(
            self.num_channels is None or self.num_channels >= 1, f"{where}.num_channels",
            f"must be >= 1; got {self.num_channels}",
        )
        require(self.file_offset >= 0, f"{where}.file_offset", f"must be >= 0; got {self.file_offset}")
        require(self.gain_to_uv != 0, f"{where}.gain_to_uv", "must not be 0")

    def check_complete(self, where: str = "binary") -> None:
        """ConfigError unless the values a raw file cannot supply are given."""
        self.validate(where)
        require(self.sampling_frequency is not None, f"{where}.sampling_frequency",
                "required for a raw binary recording")
        require(self.num_channels is not None, f"{where}.num_channels", "required for a raw binary recording")


def detect_extractor_format(path: str | os.PathLike) -> str | None:
    """'spikeglx', 'openephys' or 'nwb' when `path` is recognisably one of them, else None."""
    path = Path(path)
    if path.is_file():
        return "nwb" if path.suffix.lower() == ".nwb" else None
    if not path.is_dir():
        return None
    if path.suffix.lower() == ".nwb":  # NWB stored as a zarr folder
        return "nwb"
    names = {p.name for p in path.iterdir()}
    metas = [n for n in names if n.endswith(".meta")]
    if any(n[: -len(".meta")] + ".bin" in names for n in metas):
        return "spikeglx"
    if any(p.is_dir() and p.name.endswith(("_imec0", "_imec1")) for p in path.iterdir()):
        return "spikeglx"  # a SpikeGLX run folder: <run>_g0/<run>_g0_imec0/*.ap.bin
    if "structure.oebin" in names or "settings.xml" in names or any(n.endswith(".continuous") for n in names):
        return "openephys"
    if any(p.is_dir() and p.name.startswith("Record Node") for p in path.iterdir()):
        return "openephys"
    return None


def open_extractor(
    path: str | os.PathLike,
    format: str,
    *,
    stream_id: str | None = None,
    binary: BinaryOptions | None = None,
) -> Any:
    """A lazy SpikeInterface recording from a SpikeGLX / Open Ephys folder, an NWB file or a raw
    binary file. `stream_id` chooses among several streams (SpikeGLX: e.g. 'imec0.ap'; by
    default the only '.ap' stream); errors name the path and what was expected."""
    path = Path(path)
    if format not in EXTRACTOR_FORMATS:
        raise RecordingFormatError(f"{path}: unknown format {format!r}; expected one of {list(EXTRACTOR_FORMATS)}")
    if not path.exists():
        raise RecordingFormatError(f"{path}: does not exist")
    if format == "binary":
        return _open_binary(path, binary or BinaryOptions())
    try:
        if format == "spikeglx":
            from spikeinterface.extractors import read_spikeglx

            return read_spikeglx(path, stream_id=stream_id or _only_ap_stream(path))
        if format == "openephys":
            from spikeinterface.extractors import read_openephys

            return read_openephys(path, **({"stream_id": stream_id} if stream_id else {}))
        from spikeinterface.extractors import read_nwb

        return read_nwb(path, load_recording=True, load_sorting=False,
                        **({"electrical_series_path": stream_id} if stream_id else {}))
    except RecordingFormatError:
        raise
    except Exception as error:
        raise RecordingFormatError(f"{path}: cannot be read as {format}: {type(error).__name__}: {error}") from error


def _only_ap_stream(path: Path) -> str | None:
    """The single '.ap' stream of a SpikeGLX folder (None: let the reader decide or complain)."""
    from spikeinterface.extractors import get_neo_streams

    try:
        _, ids = get_neo_streams("spikeglx", path)
    except Exception:
        return None
    ap = [i for i in ids if str(i).endswith(".ap")]
    if len(ap) > 1:
        raise RecordingFormatError(
            f"{path}: holds several SpikeGLX AP streams {ap}; choose one with the stream id "
            "(recording.stream_id)"
        )
    return ap[0] if ap else None


def _open_binary(path: Path, options: BinaryOptions) -> Any:
    options.check_complete("recording.binary")
    if not path.is_file():
        raise RecordingFormatError(f"{path}: format 'binary' needs a file (the raw samples); got a folder")
    bytes_per_frame = options.num_channels * _itemsize(options.dtype)
    size = path.stat().st_size - options.file_offset
    if size <= 0:
        raise RecordingFormatError(
            f"{path}: holds no samples: {path.stat().st_size} bytes, recording.binary.file_offset is "
            f"{options.file_offset}"
        )
    if size % bytes_per_frame:
        raise RecordingFormatError(
            f"{path}: {size} bytes after the {options.file_offset}-byte offset are not a whole number of "
            f"frames of {options.num_channels} channels × {options.dtype} ({bytes_per_frame} bytes); "
            "check recording.binary.num_channels / dtype / file_offset"
        )
    from spikeinterface.core import read_binary

    recording = read_binary(
        path, sampling_frequency=options.sampling_frequency, dtype=options.dtype,
        num_channels=options.num_channels, file_offset=options.file_offset,
        gain_to_uV=options.gain_to_uv, offset_to_uV=options.offset_to_uv,
    )
    if options.probe is not None:
        recording = attach_probe(recording, options.probe, "recording.binary.probe")
    return recording


def attach_probe(si_recording: Any, probe_path: str | os.PathLike, key: str = "recording.probe") -> Any:
    """The recording with the probe(s) of a probeinterface JSON / .prb file attached, replacing
    whatever geometry the reader found (e.g. an Open Ephys recording without probe settings,
    or a probe the acquisition software did not know). Contacts map to channels in file order
    unless the file gives device channel indices; the contact count must equal the channel
    count. Errors (RecordingFormatError) start with `key`."""
    group = _read_probe_file(Path(probe_path).expanduser(), si_recording.get_num_channels(), key)
    si_recording.set_probegroup(group)  # in place (SpikeInterface >= 0.105); the reader's object is ours
    return si_recording


def _itemsize(dtype: str) -> int:
    import numpy as np

    try:
        return np.dtype(dtype).itemsize
    except TypeError as error:
        raise RecordingFormatError(f"recording.binary.dtype: not a numpy dtype: {dtype!r}") from error


def _read_probe_file(path: Path, num_channels: int, key: str):
    import numpy as np

    from esort_jax.io.probes import read_probe_file

    group = read_probe_file(path, key)
    contacts = sum(p.get_contact_count() for p in group.probes)
    if contacts != num_channels:
        raise RecordingFormatError(
            f"{key}: {path} describes {contacts} contacts but the recording has {num_channels} channels"
        )
    start = 0
    for probe in group.probes:
        if probe.device_channel_indices is None:
            probe.set_device_channel_indices(np.arange(start, start + probe.get_contact_count()))
        start += probe.get_contact_count()
    return group
