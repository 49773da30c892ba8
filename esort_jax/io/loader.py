"""One entry point: open whatever recording a path holds.

    esort_jax recording folder  metadata.json with format 'esort_jax.recording'
    MEArec file                 an HDF5 file (.h5/.hdf5) with 'recordings' and 'spiketrains'
    SpikeInterface folder       what `extractor.save(folder=...)` writes (si_folder.json,
                                binary.json, provenance.json or cached.json); or a folder
                                holding one such recording folder and at most one sorting folder,
                                the sorting then being returned alongside the recording
    SpikeGLX / Open Ephys       acquisition folders (`*.meta` + `*.bin`; `structure.oebin` /
                                `settings.xml`), an NWB file (`.nwb`): SpikeInterface's readers
    raw binary                  only with format='binary' and `BinaryOptions` (rate, channels,
                                dtype, probe file): a raw file does not describe itself

`format='auto'` (the default) recognises all but raw binary; `format=` forces a reader.
`open_spikeinterface_recording` gives the same recordings as lazy SpikeInterface objects (for
SpikeInterface's preprocessing, see esort_jax.realdata.preprocess).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from esort_jax.config import require
from esort_jax.io.extractors import (
    EXTRACTOR_FORMATS,
    BinaryOptions,
    attach_probe,
    detect_extractor_format,
    open_extractor,
)
from esort_jax.io.folder import RecordingFormatError, is_recording_folder, read_recording_folder
from esort_jax.io.mearec import missing_mearec_entries, read_mearec
from esort_jax.recording import GroundTruth, Recording, Sorting

__all__ = [
    "RECORDING_FORMATS",
    "RecordingSource",
    "load_recording",
    "detect_format",
    "open_spikeinterface_recording",
    "is_spikeinterface_folder",
]

RECORDING_FORMATS = ("auto", "esort_jax", "mearec", "spikeinterface", *EXTRACTOR_FORMATS)
_SI_MARKERS = ("si_folder.json", "binary.json", "provenance.json", "cached.json")
_EXPECTED = (
    "expected an esort_jax recording folder (metadata.json), a MEArec .h5 file, "
    "or a SpikeInterface-saved folder"
)


@dataclasses.dataclass(frozen=True)
class RecordingSource:
    """A recording to open, as a config: path, format and what the format cannot say itself.

    Attributes:
      path: file or folder.
      format: one of RECORDING_FORMATS ('auto' recognises all but raw binary).
      stream_id: a SpikeGLX / Open Ephys stream (e.g. 'imec0.ap'), or an NWB ElectricalSeries
        path; None takes the only AP stream.
      binary: rate, channel count, dtype and probe file of a raw binary file (format 'binary').
      probe: a probeinterface JSON / .prb file attached to the recording whatever its format,
        replacing the geometry its reader found (e.g. Open Ephys without probe settings).
    """

    path: str | None = None
    format: str = "auto"
    stream_id: str | None = None
    binary: BinaryOptions = dataclasses.field(default_factory=BinaryOptions)
    probe: str | None = None

    def validate(self, where: str = "recording") -> None:
        require(bool(self.path), f"{where}.path", "required: the recording's file or folder")
        require(
            self.format in RECORDING_FORMATS, f"{where}.format",
            f"must be one of {list(RECORDING_FORMATS)}; got {self.format!r}",
        )
        self.binary.validate(f"{where}.binary")
        if self.format == "binary":
            self.binary.check_complete(f"{where}.binary")
        require(
            not (self.probe and self.binary.probe), f"{where}.probe",
            f"set either {where}.probe or {where}.binary.probe, not both",
        )

    def open(self) -> tuple[Any, GroundTruth | Sorting | None]:
        """(lazy SpikeInterface recording, ground truth | sorting | None): see
        `open_spikeinterface_recording`."""
        return open_spikeinterface_recording(
            Path(str(self.path)).expanduser(), self.format, stream_id=self.stream_id, binary=self.binary,
            probe=self.probe,
        )


def load_recording(
    path: str | os.PathLike,
    format: str = "auto",
    *,
    stream_id: str | None = None,
    binary: BinaryOptions | None = None,
    probe: str | os.PathLike | None = None,
) -> tuple[Recording, GroundTruth | Sorting | None]:
    """(recording, ground truth | sorting | None) from a folder or file of a supported format.

    `format` forces a reader (one of RECORDING_FORMATS); `stream_id` chooses a stream of a
    SpikeGLX / Open Ephys folder (or an NWB ElectricalSeries path); `binary` describes a raw
    binary file (format='binary'); `probe` (a probeinterface JSON / .prb file) replaces the
    geometry the reader found.
    """
    path = Path(path)
    if probe is not None:
        from esort_jax.io.spikeinterface import from_spikeinterface_recording

        si_recording, labels = open_spikeinterface_recording(path, format, stream_id=stream_id, binary=binary,
                                                             probe=probe)
        return from_spikeinterface_recording(si_recording), labels
    fmt = _resolve(path, format)
    if fmt == "esort_jax":
        return read_recording_folder(path)
    if fmt == "mearec":
        return read_mearec(path)
    if fmt == "spikeinterface":
        if is_spikeinterface_folder(path):
            return _load_spikeinterface_folder(path)
        pair = _spikeinterface_pair(path)
        if pair is None:
            raise RecordingFormatError(
                f"{path}: not a SpikeInterface-saved folder: a folder containing {_listing(path)}"
                if path.is_dir() else f"{path}: not a SpikeInterface-saved folder: a file"
            )
        return pair
    from esort_jax.io.spikeinterface import from_spikeinterface_recording

    return from_spikeinterface_recording(open_extractor(path, fmt, stream_id=stream_id, binary=binary)), None


def open_spikeinterface_recording(
    path: str | os.PathLike,
    format: str = "auto",
    *,
    stream_id: str | None = None,
    binary: BinaryOptions | None = None,
    probe: str | os.PathLike | None = None,
) -> tuple[Any, GroundTruth | Sorting | None]:
    """(lazy SpikeInterface recording, ground truth | sorting | None) for any supported path.

    Acquisition formats and SpikeInterface folders come as SpikeInterface loads them; our
    folders and MEArec files through `to_spikeinterface_recording` (a memory-mapped binary
    extractor for our folders). `probe` (a probeinterface JSON / .prb file) replaces the
    geometry the reader found.
    """
    si_recording, labels = _open_spikeinterface(Path(path), format, stream_id, binary)
    if probe is not None:
        si_recording = attach_probe(si_recording, probe)
    return si_recording, labels


def _open_spikeinterface(path: Path, format: str, stream_id, binary) -> tuple[Any, GroundTruth | Sorting | None]:
    from esort_jax.io.spikeinterface import to_spikeinterface_recording

    fmt = _resolve(path, format)
    if fmt in EXTRACTOR_FORMATS:
        return open_extractor(path, fmt, stream_id=stream_id, binary=binary), None
    if fmt == "spikeinterface" and is_spikeinterface_folder(path):
        obj = _si_load(path)
        _require_recording(path, obj)
        return obj, None
    recording, labels = load_recording(path, fmt)
    si_recording = recording.traces.recording if recording.metadata.get("source") == "spikeinterface" else None
    return (si_recording if si_recording is not None else to_spikeinterface_recording(recording)), labels


def detect_format(path: str | os.PathLike) -> str:
    """The reader `load_recording(path)` would use; RecordingFormatError saying what the path
    holds when none fits."""
    path = Path(path)
    if not path.exists():
        raise RecordingFormatError(f"{path}: does not exist")
    if path.is_dir():
        if is_recording_folder(path):
            return "esort_jax"
        if is_spikeinterface_folder(path) or any(is_spikeinterface_folder(p) for p in path.iterdir()):
            return "spikeinterface"
        detected = detect_extractor_format(path)
        if detected is not None:
            return detected
        raise RecordingFormatError(
            f"{path}: not a recognised recording: a folder containing {_listing(path)}; {_EXPECTED}"
        )
    if detect_extractor_format(path) == "nwb":
        return "nwb"
    if _is_hdf5(path):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                missing = missing_mearec_entries(f)
                top = sorted(f.keys())
        except OSError as error:
            raise RecordingFormatError(
                f"{path}: not a recognised recording: not a readable HDF5 file ({error})"
            ) from error
        if missing:
            raise RecordingFormatError(
                f"{path}: an HDF5 file but not a MEArec recording: " + "; ".join(missing)
                + f" (top level holds: {', '.join(top) or 'nothing'})"
            )
        return "mearec"
    raise RecordingFormatError(
        f"{path}: not a recognised recording: a file ({path.stat().st_size} bytes, "
        f"{'suffix ' + repr(path.suffix) if path.suffix else 'no suffix'}); {_EXPECTED}"
    )


def _resolve(path: Path, format: str) -> str:
    if format not in RECORDING_FORMATS:
        raise RecordingFormatError(f"{path}: unknown format {format!r}; expected one of {list(RECORDING_FORMATS)}")
    if format == "auto":
        return detect_format(path)
    if not path.exists():
        raise RecordingFormatError(f"{path}: does not exist")
    return format


def is_spikeinterface_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / marker).is_file() for marker in _SI_MARKERS)


def _load_spikeinterface_folder(path: Path) -> tuple[Recording, None]:
    obj = _si_load(path)
    _require_recording(path, obj)
    from esort_jax.io.spikeinterface import from_spikeinterface_recording

    return from_spikeinterface_recording(obj), None


def _require_recording(path: Path, obj: Any) -> None:
    from spikeinterface.core import BaseRecording, BaseSorting

    if isinstance(obj, BaseSorting):
        raise RecordingFormatError(f"{path}: holds a SpikeInterface sorting, not a recording")
    if not isinstance(obj, BaseRecording):
        kind = type(obj).__name__
        raise RecordingFormatError(f"{path}: holds a SpikeInterface {kind}, not a recording")


def _spikeinterface_pair(path: Path) -> tuple[Recording, Sorting | None] | None:
    """A folder holding one SpikeInterface recording folder and at most one sorting folder."""
    candidates = [p for p in sorted(path.iterdir()) if is_spikeinterface_folder(p)]
    if not candidates:
        return None
    from spikeinterface.core import BaseRecording, BaseSorting

    loaded = [(p, _si_load(p)) for p in candidates]
    recordings = [(p, o) for p, o in loaded if isinstance(o, BaseRecording)]
    sortings = [(p, o) for p, o in loaded if isinstance(o, BaseSorting)]
    if len(recordings) != 1 or len(sortings) > 1:
        raise RecordingFormatError(
            f"{path}: holds {len(recordings)} SpikeInterface recording folder(s) "
            f"{[p.name for p, _ in recordings]} and {len(sortings)} sorting folder(s) "
            f"{[p.name for p, _ in sortings]}; load one of them directly"
        )
    from esort_jax.io.spikeinterface import (
        from_spikeinterface_recording,
        from_spikeinterface_sorting,
    )

    recording = from_spikeinterface_recording(recordings[0][1])
    sorting = from_spikeinterface_sorting(sortings[0][1]) if sortings else None
    return recording, sorting


def _si_load(path: Path):
    import spikeinterface

    try:
        return spikeinterface.load(path)
    except Exception as error:
        raise RecordingFormatError(
            f"{path}: looks like a SpikeInterface folder but does not load: {error}"
        ) from error


def _is_hdf5(path: Path) -> bool:
    if path.suffix.lower() in (".h5", ".hdf5"):
        return True
    with open(path, "rb") as handle:  # HDF5 signature at offset 0 (files with a user block aside)
        return handle.read(8) == b"\x89HDF\r\n\x1a\n"


def _listing(path: Path, limit: int = 10) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not names:
        return "nothing"
    shown = ", ".join(names[:limit])
    return f"[{shown}{f', ... ({len(names) - limit} more)' if len(names) > limit else ''}]"
