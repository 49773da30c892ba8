"""esort_jax's own on-disk recording format: one folder per recording.

    <folder>/
      metadata.json      format tag and version, sizes, fs, dtype and gain, generating config,
                         seed, provenance (package versions, git commit, time)
      traces.npy         [T, C] samples, time-major; memory-mapped on read
      channels.npz       channel_positions [C, 2] µm, channel_ids [C]
      probe.json         probeinterface description of the sites (when known)
      ground_truth.npz   spike samples, unit indices, unit ids, unit table, drift (when known)

The folder is written under a temporary name and renamed into place when complete, so a
folder found at its final path always loads (see esort_jax.io.atomic).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from esort_jax.io.atomic import atomic_folder, write_json, write_npz
from esort_jax.runtime.provenance import provenance
from esort_jax.recording import ArrayTraces, Drift, GroundTruth, Recording, Sorting

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "is_recording_folder",
    "write_recording_folder",
    "read_recording_folder",
    "write_sorting_npz",
    "read_sorting_npz",
    "RecordingFormatError",
    "metadata_problem",
]

FORMAT_NAME = "esort_jax.recording"
FORMAT_VERSION = 1
_TABLE_PREFIX = "unit_table__"


class RecordingFormatError(ValueError):
    """A file or folder does not hold what its format promises."""


def is_recording_folder(path: str | os.PathLike) -> bool:
    """Whether `path` holds a metadata.json tagged as an esort_jax recording folder."""
    meta = Path(path) / "metadata.json"
    if not meta.is_file():
        return False
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT_NAME


def metadata_problem(path: str | os.PathLike) -> str | None:
    """Why `path`/metadata.json cannot be read as JSON ("... is not valid JSON: <why> at line L,
    column C"); None when it can, or when there is none."""
    meta = Path(path) / "metadata.json"
    if not meta.is_file():
        return None
    try:
        json.loads(meta.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        return f"{meta} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
    except (OSError, UnicodeDecodeError) as error:
        return f"{meta} cannot be read as JSON text: {error}"
    return None


def write_recording_folder(
    path: str | os.PathLike,
    recording: Recording,
    ground_truth: GroundTruth | Sorting | None = None,
    metadata: dict | None = None,
    overwrite: bool = False,
    chunk_samples: int = 65536,
    dtype: str = "float32",
    gain_to_uv: float = 1.0,
    progress: bool = False,
) -> Path:
    """Write `recording` (streamed chunk by chunk) and its ground truth to a folder, atomically.

    The traces are read through `recording.read`, so a lazily synthesised recording is
    generated here in bounded memory. With dtype='int16' samples are stored as
    round(µV / gain_to_uv) and read back scaled.
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype("float32"), np.dtype("int16")):
        raise ValueError(f"dtype must be 'float32' or 'int16'; got {dtype}")
    if dtype == np.float32 and gain_to_uv != 1.0:
        raise ValueError("gain_to_uv applies to int16 storage only")
    num_samples, num_channels = recording.num_samples, recording.num_channels
    with atomic_folder(path, overwrite=overwrite) as tmp:
        _write_traces(tmp / "traces.npy", recording, chunk_samples, dtype, gain_to_uv,
                      desc=f"writing {path.name}" if progress else None)
        np.savez(
            tmp / "channels.npz",
            channel_positions=recording.channel_positions,
            channel_ids=recording.channel_ids,
        )
        if recording.probe is not None:
            import probeinterface

            probeinterface.write_probeinterface(tmp / "probe.json", recording.probe)
        if ground_truth is not None:
            write_sorting_npz(tmp / "ground_truth.npz", ground_truth)
        write_json(
            tmp / "metadata.json",
            {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "num_samples": num_samples,
                "num_channels": num_channels,
                "sampling_frequency": recording.sampling_frequency,
                "dtype": dtype.name,
                "gain_to_uv": gain_to_uv,
                "offset_to_uv": 0.0,
                "has_ground_truth": ground_truth is not None,
                "provenance": provenance(),
                **(metadata or {}),
                "recording_metadata": recording.metadata,
            },
        )
    return path


def _write_traces(npy: Path, recording: Recording, chunk_samples: int, dtype: np.dtype, gain_to_uv: float,
                  desc: str | None) -> None:
    """Stream the traces into an .npy file chunk by chunk (a progress bar when `desc`), fsynced.

    Sequential writes, not a memory map: a mapped output's pages count as resident memory (peak
    RSS = file size) and page-faulting them in is slower than write(). After each chunk,
    POSIX_FADV_DONTNEED starts its writeback in the background (and drops it from the page cache
    once on disk), so the final fsync has little left.
    """
    num_samples, num_channels = recording.num_samples, recording.num_channels
    advise = getattr(os, "posix_fadvise", None)
    with open(npy, "wb") as handle:
        _write_npy_header(handle, dtype, (num_samples, num_channels))
        flushed = 0
        chunks = recording.iter_chunks(chunk_samples)
        if desc is not None:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, total=-(-num_samples // chunk_samples), desc=desc, unit="chunk")
        for start, block in chunks:
            expected = (min(chunk_samples, num_samples - start), num_channels)
            if block.shape != expected:
                raise ValueError(
                    f"recording.read({start}, {start + expected[0]}) returned shape {block.shape}; expected {expected}"
                )
            if dtype == np.int16:
                block = np.clip(np.rint(block / gain_to_uv), -32768, 32767)
            handle.write(np.ascontiguousarray(block, dtype=dtype).data)
            if advise is not None:
                handle.flush()
                written = handle.tell()
                advise(handle.fileno(), flushed, written - flushed, os.POSIX_FADV_DONTNEED)
                flushed = written
        handle.flush()
        os.fsync(handle.fileno())


def _write_npy_header(handle, dtype: np.dtype, shape: tuple[int, int]) -> None:
    """The .npy header `np.lib.format.open_memmap` would write (format 1.0, else 2.0)."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    try:
        np.lib.format.write_array_header_1_0(handle, header)
    except ValueError:
        np.lib.format.write_array_header_2_0(handle, header)


def read_recording_folder(path: str | os.PathLike) -> tuple[Recording, GroundTruth | Sorting | None]:
    """Open a recording folder lazily: traces are memory-mapped, nothing large is read. Every
    file is checked against metadata.json (sizes, dtype, channel count, spikes inside the
    recording); RecordingFormatError names the file and field otherwise."""
    path = Path(path)
    meta = _read_metadata(path)
    traces = _open_traces(path / "traces.npy", meta)
    channels = _load_npz(path / "channels.npz", ("channel_positions", "channel_ids"))
    probe = _read_probe(path / "probe.json", meta["num_channels"]) if (path / "probe.json").is_file() else None
    try:
        recording = Recording(
            traces=ArrayTraces(traces, meta.get("gain_to_uv", 1.0), meta.get("offset_to_uv", 0.0)),
            sampling_frequency=meta["sampling_frequency"],
            channel_positions=channels["channel_positions"],
            probe=probe,
            channel_ids=channels["channel_ids"],
            metadata={**meta.get("recording_metadata", {}), "source": str(path), "folder_metadata": meta},
        )
    except ValueError as error:
        raise RecordingFormatError(f"{path / 'channels.npz'}: {error}") from error
    ground_truth = None
    if (path / "ground_truth.npz").is_file():
        ground_truth = read_sorting_npz(path / "ground_truth.npz")
        _check_spikes_fit(path / "ground_truth.npz", ground_truth, meta)
    elif meta.get("has_ground_truth"):
        raise RecordingFormatError(f"{path}: metadata says it has ground truth but ground_truth.npz is missing")
    return recording, ground_truth


def _read_metadata(path: Path) -> dict:
    """metadata.json, checked: valid JSON, our format, a version we read, the sizes and rate."""
    meta_path = path / "metadata.json"
    if not meta_path.is_file():
        raise RecordingFormatError(f"{path} is not an esort_jax recording folder: no metadata.json")
    problem = metadata_problem(path)
    if problem:
        raise RecordingFormatError(problem)
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        found = meta.get("format") if isinstance(meta, dict) else f"a JSON {type(meta).__name__}"
        raise RecordingFormatError(f"{meta_path}: field 'format' is {found!r}; expected {FORMAT_NAME!r}")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise RecordingFormatError(
            f"{meta_path}: format_version {version!r} is newer than this esort_jax reads ({FORMAT_VERSION}); "
            "update esort_jax"
        )
    checks = {
        "num_samples": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "num_channels": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "sampling_frequency": (lambda v: _is_number(v) and v > 0, "a number > 0 (Hz)"),
        "gain_to_uv": (lambda v: _is_number(v) and v != 0, "a non-zero number"),
        "offset_to_uv": (_is_number, "a number"),
    }
    for field, (ok, what) in checks.items():
        if field not in meta and field in ("gain_to_uv", "offset_to_uv"):
            continue
        if field not in meta:
            raise RecordingFormatError(f"{meta_path}: field {field!r} is missing")
        if not ok(meta[field]):
            raise RecordingFormatError(f"{meta_path}: field {field!r} must be {what}; got {meta[field]!r}")
    return meta


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _read_probe(probe_path: Path, num_channels: int):
    from esort_jax.io.probes import read_probe_file

    group = read_probe_file(probe_path, key=str(probe_path.parent))
    probe = group.probes[0]
    if len(group.probes) != 1 or probe.get_contact_count() != num_channels:
        raise RecordingFormatError(
            f"{probe_path}: describes {len(group.probes)} probe(s) with "
            f"{sum(p.get_contact_count() for p in group.probes)} contacts; metadata.json says {num_channels} channels"
        )
    return probe


def _check_spikes_fit(npz_path: Path, sorting: Sorting, meta: dict) -> None:
    """Spikes inside the recording, at its sampling rate."""
    fs = meta["sampling_frequency"]
    if abs(sorting.sampling_frequency - fs) > 1e-9 * fs:
        raise RecordingFormatError(
            f"{npz_path}: sampling_frequency {sorting.sampling_frequency:g} Hz differs from metadata.json's {fs:g} Hz"
        )
    if sorting.num_spikes and int(sorting.samples.max()) >= meta["num_samples"]:
        raise RecordingFormatError(
            f"{npz_path}: spike sample {int(sorting.samples.max())} is beyond the recording's "
            f"{meta['num_samples']} samples"
        )


def _open_traces(npy_path: Path, meta: dict) -> np.memmap:
    if not npy_path.is_file():
        raise RecordingFormatError(f"{npy_path.parent}: traces.npy is missing")
    with open(npy_path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(handle)
        except ValueError as error:
            raise RecordingFormatError(f"{npy_path}: not a valid .npy file ({error})") from error
        header_bytes = handle.tell()
    expected_shape = (meta["num_samples"], meta["num_channels"])
    if tuple(shape) != expected_shape:
        raise RecordingFormatError(
            f"{npy_path}: traces shape {tuple(shape)} does not match metadata.json {expected_shape}"
        )
    if fortran_order:
        raise RecordingFormatError(f"{npy_path}: traces must be C-ordered (time-major)")
    if "dtype" in meta and str(meta["dtype"]) != dtype.name:
        raise RecordingFormatError(
            f"{npy_path}: holds {dtype.name} samples but metadata.json says dtype {meta['dtype']!r}"
        )
    expected_bytes = header_bytes + int(np.prod(shape)) * dtype.itemsize
    actual_bytes = npy_path.stat().st_size
    if actual_bytes < expected_bytes:
        raise RecordingFormatError(
            f"{npy_path} is truncated: header says {shape} {dtype} = {expected_bytes} bytes, "
            f"file holds {actual_bytes} bytes"
        )
    return np.load(npy_path, mmap_mode="r")


def _load_npz(path: Path, required: tuple[str, ...]) -> dict:
    if not path.is_file():
        raise RecordingFormatError(f"{path.parent}: {path.name} is missing")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in required if k not in data.files]
            if missing:
                raise RecordingFormatError(f"{path}: missing array(s) {missing}; found {data.files}")
            return {k: data[k] for k in data.files}
    except RecordingFormatError:
        raise
    except Exception as error:  # not a zip, truncated, or object arrays (pickles): never unpickled
        raise RecordingFormatError(f"{path}: not a readable .npz file ({type(error).__name__}: {error})") from error


def write_sorting_npz(path: str | os.PathLike, sorting: Sorting) -> None:
    """Atomically write a Sorting (or GroundTruth with unit table and drift) to .npz."""
    arrays = {
        "samples": sorting.samples,
        "unit_indices": sorting.unit_indices,
        "unit_ids": _without_objects(sorting.unit_ids, "unit_ids"),
        "sampling_frequency": np.float64(sorting.sampling_frequency),
    }
    if isinstance(sorting, GroundTruth):
        arrays["is_ground_truth"] = np.bool_(True)
        for name, column in sorting.unit_table.items():
            arrays[_TABLE_PREFIX + name] = _without_objects(column, f"unit_table[{name!r}]")
        if sorting.drift is not None:
            arrays["drift_samples"] = sorting.drift.samples
            arrays["drift_displacement_um"] = sorting.drift.displacement_um
        if sorting.spike_amplitude_scales is not None:
            arrays["spike_amplitude_scales"] = sorting.spike_amplitude_scales
    write_npz(path, **arrays)


def _without_objects(values, name: str) -> np.ndarray:
    """`values` as an array numpy stores without pickling: an object array of strings or numbers
    becomes a str / numeric array; anything else is refused (the reader never unpickles)."""
    array = np.asarray(values)
    if array.dtype != object:
        return array
    converted = np.asarray(array.tolist())
    if converted.dtype == object or converted.shape != array.shape:
        raise ValueError(f"{name}: holds Python objects ({type(array.flat[0]).__name__}, ...) that an .npz "
                         "cannot store without pickling; give strings or numbers")
    return converted


def read_sorting_npz(path: str | os.PathLike) -> Sorting | GroundTruth:
    """Read what `write_sorting_npz` wrote; RecordingFormatError naming the file and array when
    it does not hold a valid sorting."""
    path = Path(path)
    data = _load_npz(path, ("samples", "unit_indices", "unit_ids", "sampling_frequency"))
    samples = data["samples"]
    if samples.ndim != 1 or samples.dtype.kind not in "iu" or (samples.size and samples.min() < 0):
        raise RecordingFormatError(
            f"{path}: 'samples' must be a 1-D array of sample indices >= 0; got shape {samples.shape}, "
            f"dtype {samples.dtype}" + (f", min {samples.min()}" if samples.size and samples.dtype.kind in "iuf" else "")
        )
    try:
        fs = float(data["sampling_frequency"])
    except (TypeError, ValueError) as error:
        raise RecordingFormatError(f"{path}: 'sampling_frequency' must be a number; {error}") from error
    if not (np.isfinite(fs) and fs > 0):
        raise RecordingFormatError(f"{path}: 'sampling_frequency' must be a number > 0 (Hz); got {fs:g}")
    try:
        common = dict(samples=samples, unit_indices=data["unit_indices"], unit_ids=data["unit_ids"],
                      sampling_frequency=fs)
        if not bool(data.get("is_ground_truth", False)):
            return Sorting(**common)
        drift = None
        if "drift_samples" in data:
            drift = Drift(samples=data["drift_samples"], displacement_um=data["drift_displacement_um"])
        table = {k[len(_TABLE_PREFIX):]: v for k, v in data.items() if k.startswith(_TABLE_PREFIX)}
        return GroundTruth(**common, unit_table=table, drift=drift,
                           spike_amplitude_scales=data.get("spike_amplitude_scales"))
    except (ValueError, TypeError, KeyError) as error:
        raise RecordingFormatError(f"{path}: not a valid sorting: {type(error).__name__}: {error}") from error
