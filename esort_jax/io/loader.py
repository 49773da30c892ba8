"""One entry point: open whatever recording a path holds.

    esort_jax recording folder  metadata.json with format 'esort_jax.recording'
    MEArec file                 an HDF5 file (.h5/.hdf5) with 'recordings' and 'spiketrains'
    SpikeInterface folder       what `extractor.save(folder=...)` writes (si_folder.json,
                                binary.json, provenance.json or cached.json); or a folder
                                holding one such recording folder and at most one sorting folder,
                                the sorting then being returned alongside the recording
"""

from __future__ import annotations

import os
from pathlib import Path

from esort_jax.io.folder import RecordingFormatError, is_recording_folder, read_recording_folder
from esort_jax.io.mearec import missing_mearec_entries, read_mearec
from esort_jax.recording import GroundTruth, Recording, Sorting

__all__ = ["load_recording", "is_spikeinterface_folder"]

_SI_MARKERS = ("si_folder.json", "binary.json", "provenance.json", "cached.json")
_EXPECTED = (
    "expected an esort_jax recording folder (metadata.json), a MEArec .h5 file, "
    "or a SpikeInterface-saved folder"
)


def load_recording(path: str | os.PathLike) -> tuple[Recording, GroundTruth | Sorting | None]:
    """(recording, ground truth | sorting | None) from a folder or file of a supported format."""
    path = Path(path)
    if not path.exists():
        raise RecordingFormatError(f"{path}: does not exist")
    if path.is_dir():
        if is_recording_folder(path):
            return read_recording_folder(path)
        if is_spikeinterface_folder(path):
            return _load_spikeinterface_folder(path)
        pair = _spikeinterface_pair(path)
        if pair is not None:
            return pair
        raise RecordingFormatError(
            f"{path}: not a recognised recording: a folder containing {_listing(path)}; {_EXPECTED}"
        )
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
        return read_mearec(path)
    raise RecordingFormatError(
        f"{path}: not a recognised recording: a file ({path.stat().st_size} bytes, "
        f"{'suffix ' + repr(path.suffix) if path.suffix else 'no suffix'}); {_EXPECTED}"
    )


def is_spikeinterface_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / marker).is_file() for marker in _SI_MARKERS)


def _load_spikeinterface_folder(path: Path) -> tuple[Recording, None]:
    obj = _si_load(path)
    from spikeinterface.core import BaseRecording, BaseSorting

    if isinstance(obj, BaseSorting):
        raise RecordingFormatError(f"{path}: holds a SpikeInterface sorting, not a recording")
    if not isinstance(obj, BaseRecording):
        kind = type(obj).__name__
        raise RecordingFormatError(f"{path}: holds a SpikeInterface {kind}, not a recording")
    from esort_jax.io.spikeinterface import from_spikeinterface_recording

    return from_spikeinterface_recording(obj), None


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
