"""One entry point: open whatever recording a path holds.

    esort_jax recording folder  metadata.json with format 'esort_jax.recording'
    MEArec file                 an HDF5 file (.h5/.hdf5) with 'recordings' and 'spiketrains'
    SpikeInterface folder       what `extractor.save(folder=...)` writes (si_folder.json,
                                binary.json, provenance.json or cached.json); or a folder
                                holding one such recording folder and at most one sorting folder,
                                the sorting then being returned alongside the recording. Loaded
                                without running code from the folder: pickles are refused unless
                                `allow_pickle=True` (see esort_jax.io.untrusted)
    SpikeGLX / Open Ephys       acquisition folders (`*.meta` + `*.bin`; `structure.oebin` /
                                `settings.xml`), an NWB file (`.nwb`): SpikeInterface's readers
    raw binary                  only with format='binary' and `BinaryOptions` (rate, channels,
                                dtype, probe file): a raw file does not describe itself

`format='auto'` (the default) recognises all but raw binary; `format=` forces a reader.
`load_ground_truth` reads the spikes of any input that carries them (the formats above, a
SpikeInterface sorting folder, a Phy/Kilosort folder, a .npz written by write_sorting_npz).
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
from esort_jax.io.folder import (
    RecordingFormatError,
    is_recording_folder,
    metadata_problem,
    read_recording_folder,
    read_sorting_npz,
)
from esort_jax.io.mearec import missing_mearec_entries, read_mearec
from esort_jax.io.untrusted import load_spikeinterface_folder
from esort_jax.recording import GroundTruth, Recording, Sorting

__all__ = [
    "RECORDING_FORMATS",
    "RecordingSource",
    "load_recording",
    "detect_format",
    "open_spikeinterface_recording",
    "is_spikeinterface_folder",
    "load_ground_truth",
]

RECORDING_FORMATS = ("auto", "esort_jax", "mearec", "spikeinterface", *EXTRACTOR_FORMATS)
_SI_MARKERS = ("si_folder.json", "binary.json", "provenance.json", "cached.json", "cached.pkl", "cached.pickle")
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
      allow_pickle: trust a SpikeInterface folder: load it with `spikeinterface.load` as it is,
        pickles included (which run whatever code they hold); off by default.
    """

    path: str | None = None
    format: str = "auto"
    stream_id: str | None = None
    binary: BinaryOptions = dataclasses.field(default_factory=BinaryOptions)
    probe: str | None = None
    allow_pickle: bool = False

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
            probe=self.probe, allow_pickle=self.allow_pickle,
        )

    def load(self) -> tuple[Recording, GroundTruth | Sorting | None]:
        """(recording, ground truth | sorting | None): see `load_recording`."""
        return load_recording(
            Path(str(self.path)).expanduser(), self.format, stream_id=self.stream_id, binary=self.binary,
            probe=self.probe, allow_pickle=self.allow_pickle,
        )


def load_recording(
    path: str | os.PathLike,
    format: str = "auto",
    *,
    stream_id: str | None = None,
    binary: BinaryOptions | None = None,
    probe: str | os.PathLike | None = None,
    allow_pickle: bool = False,
) -> tuple[Recording, GroundTruth | Sorting | None]:
    """(recording, ground truth | sorting | None) from a folder or file of a supported format.

    `format` forces a reader (one of RECORDING_FORMATS); `stream_id` chooses a stream of a
    SpikeGLX / Open Ephys folder (or an NWB ElectricalSeries path); `binary` describes a raw
    binary file (format='binary'); `probe` (a probeinterface JSON / .prb file) replaces the
    geometry the reader found; `allow_pickle` trusts a SpikeInterface folder's pickles
    (esort_jax.io.untrusted).
    """
    path = Path(path)
    if probe is not None:
        from esort_jax.io.spikeinterface import from_spikeinterface_recording

        si_recording, labels = open_spikeinterface_recording(path, format, stream_id=stream_id, binary=binary,
                                                             probe=probe, allow_pickle=allow_pickle)
        return from_spikeinterface_recording(si_recording), labels
    fmt = _resolve(path, format)
    if fmt == "esort_jax":
        return read_recording_folder(path)
    if fmt == "mearec":
        return read_mearec(path)
    from esort_jax.io.spikeinterface import from_spikeinterface_recording, from_spikeinterface_sorting

    if fmt == "spikeinterface":
        si_recording, si_sorting = _spikeinterface_objects(path, allow_pickle)
        sorting = None if si_sorting is None else from_spikeinterface_sorting(si_sorting)
        return from_spikeinterface_recording(si_recording), sorting
    return from_spikeinterface_recording(open_extractor(path, fmt, stream_id=stream_id, binary=binary)), None


def open_spikeinterface_recording(
    path: str | os.PathLike,
    format: str = "auto",
    *,
    stream_id: str | None = None,
    binary: BinaryOptions | None = None,
    probe: str | os.PathLike | None = None,
    allow_pickle: bool = False,
) -> tuple[Any, GroundTruth | Sorting | None]:
    """(lazy SpikeInterface recording, ground truth | sorting | None) for any supported path.

    Acquisition formats and SpikeInterface folders come as SpikeInterface loads them (the latter
    without running code from the folder unless `allow_pickle`); our folders and MEArec files
    through `to_spikeinterface_recording` (a memory-mapped binary extractor for our folders).
    `probe` (a probeinterface JSON / .prb file) replaces the geometry the reader found.
    """
    si_recording, labels = _open_spikeinterface(Path(path), format, stream_id, binary, allow_pickle)
    if probe is not None:
        si_recording = attach_probe(si_recording, probe)
    return si_recording, labels


def _open_spikeinterface(path: Path, format: str, stream_id, binary, allow_pickle: bool):
    from esort_jax.io.spikeinterface import from_spikeinterface_sorting, to_spikeinterface_recording

    fmt = _resolve(path, format)
    if fmt in EXTRACTOR_FORMATS:
        return open_extractor(path, fmt, stream_id=stream_id, binary=binary), None
    if fmt == "spikeinterface":
        si_recording, si_sorting = _spikeinterface_objects(path, allow_pickle)
        return si_recording, None if si_sorting is None else from_spikeinterface_sorting(si_sorting)
    recording, labels = load_recording(path, fmt)
    return to_spikeinterface_recording(recording), labels


def load_ground_truth(path: str | os.PathLike, *, allow_pickle: bool = False) -> GroundTruth | Sorting:
    """The spikes `path` carries: an esort_jax recording folder's ground truth, a MEArec file's,
    a SpikeInterface sorting folder (or a folder pairing a recording with its sorting), a
    Phy/Kilosort folder, or a .npz written by write_sorting_npz. Cheap (no traces are read), so a
    run can check it before any heavy work; RecordingFormatError naming the path otherwise."""
    path = Path(path).expanduser()
    if not path.exists():
        raise RecordingFormatError(f"{path}: ground truth: does not exist")
    if path.is_file() and path.suffix.lower() == ".npz":
        return read_sorting_npz(path)
    from esort_jax.io.phy import is_phy_folder, read_phy_folder

    if is_phy_folder(path):
        return read_phy_folder(path).sorting
    if is_spikeinterface_folder(path):
        from spikeinterface.core import BaseSorting

        from esort_jax.io.spikeinterface import from_spikeinterface_sorting

        obj = load_spikeinterface_folder(path, allow_pickle=allow_pickle)
        if isinstance(obj, BaseSorting):
            return from_spikeinterface_sorting(obj)
    try:
        fmt = detect_format(path)
    except RecordingFormatError as error:
        raise RecordingFormatError(f"ground truth: {error}; or a Phy/Kilosort folder, a .npz sorting") from error
    truth = load_recording(path, fmt, allow_pickle=allow_pickle)[1] if fmt in ("esort_jax", "mearec", "spikeinterface") \
        else None
    if truth is None:
        raise RecordingFormatError(f"{path}: ground truth: a recording ({fmt} format) that carries no spike times")
    return truth


def detect_format(path: str | os.PathLike) -> str:
    """The reader `load_recording(path)` would use; RecordingFormatError saying what the path
    holds when none fits."""
    path = Path(path)
    if not path.exists():
        raise RecordingFormatError(f"{path}: does not exist")
    if path.is_dir():
        return _detect_folder(path)
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


def _detect_folder(path: Path) -> str:
    if is_recording_folder(path):
        return "esort_jax"
    problem = metadata_problem(path)  # a metadata.json that does not parse: say so, not "unrecognised"
    if problem and (path / "traces.npy").is_file():
        raise RecordingFormatError(problem)
    if is_spikeinterface_folder(path) or any(is_spikeinterface_folder(p) for p in path.iterdir()):
        return "spikeinterface"
    detected = detect_extractor_format(path)
    if detected is not None:
        return detected
    if problem:
        raise RecordingFormatError(problem)
    raise RecordingFormatError(
        f"{path}: not a recognised recording: a folder containing {_listing(path)}; {_EXPECTED}"
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
    """Whether `path` is a folder SpikeInterface's save() wrote (by its marker files)."""
    path = Path(path)
    return path.is_dir() and any((path / marker).is_file() for marker in _SI_MARKERS)


def _spikeinterface_objects(path: Path, allow_pickle: bool) -> tuple[Any, Any]:
    """(SpikeInterface recording, sorting or None) of a SpikeInterface recording folder, or of
    a folder holding one recording folder and at most one sorting folder."""
    from spikeinterface.core import BaseRecording, BaseSorting

    if is_spikeinterface_folder(path):
        obj = load_spikeinterface_folder(path, allow_pickle=allow_pickle)
        if not isinstance(obj, BaseRecording):
            kind = "sorting" if isinstance(obj, BaseSorting) else type(obj).__name__
            raise RecordingFormatError(f"{path}: holds a SpikeInterface {kind}, not a recording")
        return obj, None
    candidates = [p for p in sorted(path.iterdir()) if is_spikeinterface_folder(p)] if path.is_dir() else []
    if not candidates:
        what = f"a folder containing {_listing(path)}" if path.is_dir() else "a file"
        raise RecordingFormatError(f"{path}: not a SpikeInterface-saved folder: {what}")
    loaded = [(p, load_spikeinterface_folder(p, allow_pickle=allow_pickle)) for p in candidates]
    recordings = [(p, o) for p, o in loaded if isinstance(o, BaseRecording)]
    sortings = [(p, o) for p, o in loaded if isinstance(o, BaseSorting)]
    if len(recordings) != 1 or len(sortings) > 1:
        raise RecordingFormatError(
            f"{path}: holds {len(recordings)} SpikeInterface recording folder(s) "
            f"{[p.name for p, _ in recordings]} and {len(sortings)} sorting folder(s) "
            f"{[p.name for p, _ in sortings]}; load one of them directly"
        )
    return recordings[0][1], (sortings[0][1] if sortings else None)


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
