"""MEArec .h5 recordings: lazy reader and an atomic writer of the same layout.

The layout (MEArec >= 1.5; checked against MEArec's `tools.save_recording_to_file` and
`load_recordings_from_file`, and against the readers in neo `MEArecRawIO`, SpikeInterface
`MEArecSortingExtractor` and probeinterface `read_mearec`):

    recordings                 (n_samples, n_channels), time-major, attribute gain_to_uV
                               (MEArec < 1.5 stored (n_channels, n_samples): still read, lazily)
    timestamps                 (n_samples,) seconds
    channel_positions          (n_channels, 3) µm; the probe lies in the plane
                               info/electrodes/plane (default 'yz': columns 1, 2)
    spiketrains/<i>/times      spike times of unit i, seconds; <i> = 0, 1, ... (sort numerically)
    spiketrains/<i>/t_stop     duration, seconds
    spiketrains/<i>/annotations/*   cell_type ('E'/'I'), fr, snr, soma_position, mtype, ...
    templates                  (n_units[, n_drift_steps][, n_jitters], n_channels, n_samples),
                               size-1 axes squeezed
    template_locations         (n_units[, n_drift_steps], 3)
    voltage_peaks              (n_units, n_channels): minus the template value at its trough time
    drift_list/<k>/*           drift_vector_idxs, drift_fs, drift_factors, drift_steps, ...
    info/*                     every generation parameter; None is stored as the string 'null'

Spike samples: MEArec places a spike's template at int(times * fs) (floor), and SpikeInterface's
MEArec sorting extractor converts times with the same floor; `read_mearec` does the same by
default (`time_to_sample='round'` is available). `write_mearec` writes times that floor *and*
round back to the exact sample, so every reader agrees.

Files written here also carry an `esort_jax/` group (unit ids, the full unit table, drift,
per-spike amplitude scales, recording metadata) that MEArec tools ignore; when present the
reader prefers it, so our own round trips are exact.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from esort_jax.io.atomic import atomic_path, to_jsonable
from esort_jax.io.folder import RecordingFormatError
from esort_jax.recording import ArrayTraces, Drift, GroundTruth, Recording, Sorting

__all__ = ["read_mearec", "write_mearec", "is_mearec_file", "HDF5Traces", "MEAREC_LAYOUT_VERSION"]

# The MEArec version whose layout write_mearec reproduces (stored as attribute 'mearec_version',
# which MEArec's loader checks to be >= 1.5).
MEAREC_LAYOUT_VERSION = "1.11.0"
_SAMPLE_EPS = 1e-6  # samples; guards floor() against times written as sample / fs
_PLANE_COLUMNS = {"xy": (0, 1, 2), "xz": (0, 2, 1), "yz": (1, 2, 0)}  # (across, depth, normal)
# Electrode shape written when the probe's is unknown or not uniform: probeinterface's
# read_mearec (and MEAutility) need one shape and size for all electrodes.
_DEFAULT_CONTACT = {"shape": "circle", "size": 5.0}
_REQUIRED = (("recordings", "dataset"), ("spiketrains", "group"), ("info/recordings/fs", "dataset"),
             ("channel_positions", "dataset"))


class HDF5Traces(ArrayTraces):
    """`ArrayTraces` over an h5py dataset; keeps its file open for as long as it lives."""

    def __init__(self, array: Any, h5file: Any, gain_to_uv: Any = 1.0, offset_to_uv: Any = 0.0):
        super().__init__(array, gain_to_uv, offset_to_uv)
        self.file = h5file

    def close(self) -> None:
        self.file.close()


class _ChannelMajor:
    """A (n_channels, n_samples) dataset seen as (n_samples, n_channels), sliced lazily."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.dtype = dataset.dtype
        self.shape = (dataset.shape[1], dataset.shape[0])

    def __getitem__(self, key: slice) -> np.ndarray:
        return np.asarray(self.dataset[:, key]).T


# --------------------------------------------------------------------------------------------
# reading


def is_mearec_file(path: str | os.PathLike) -> bool:
    """True when `path` is an HDF5 file holding 'recordings' and 'spiketrains'."""
    import h5py

    path = Path(path)
    if not path.is_file() or not h5py.is_hdf5(path):
        return False
    with h5py.File(path, "r") as f:
        return "recordings" in f and "spiketrains" in f


def missing_mearec_entries(h5file: Any) -> list[str]:
    """Descriptions of the required MEArec entries absent from an open h5py file."""
    import h5py

    missing = []
    for name, kind in _REQUIRED:
        node = h5file.get(name)
        wanted = h5py.Dataset if kind == "dataset" else h5py.Group
        if not isinstance(node, wanted):
            parent = name.rpartition("/")[0]
            where = h5file.get(parent) if parent else h5file
            found = sorted(where.keys()) if isinstance(where, h5py.Group) else []
            place = f" in '{parent}'" if parent and isinstance(where, h5py.Group) else ""
            listing = ", ".join(found) or "nothing"
            missing.append(f"{kind} '{name}' is missing (found{place}: {listing})")
    return missing


def read_mearec(
    path: str | os.PathLike, *, time_to_sample: str = "floor"
) -> tuple[Recording, GroundTruth | Sorting]:
    """Open a MEArec .h5 recording lazily; return it with its ground truth.

    Traces stay in the file (an h5py dataset behind `HDF5Traces`, which keeps the file open; call
    `recording.traces.close()` to release it early). Spike samples are floor(times * fs) by
    default, as MEArec and SpikeInterface compute them; time_to_sample='round' rounds instead.
    """
    import h5py

    if time_to_sample not in ("floor", "round"):
        raise ValueError(f"time_to_sample must be 'floor' or 'round'; got {time_to_sample!r}")
    path = Path(path)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise RecordingFormatError(f"{path}: {problem}")
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise RecordingFormatError(f"{path}: not an HDF5 file ({error})") from error
    try:
        return _read(f, path, time_to_sample)
    except BaseException:
        f.close()
        raise


def _read(f: Any, path: Path, time_to_sample: str) -> tuple[Recording, GroundTruth | Sorting]:
    missing = missing_mearec_entries(f)
    if missing:
        raise RecordingFormatError(f"{path}: not a MEArec recording: " + "; ".join(missing))
    info = _read_group(f["info"]) if isinstance(f.get("info"), _h5py().Group) else {}
    fs = float(_scalar(f["info/recordings/fs"]))
    version = _decode(f.attrs.get("mearec_version", "1.4.0"))
    positions3 = np.asarray(f["channel_positions"][()], dtype=np.float64)
    if positions3.ndim != 2 or positions3.shape[1] != 3:
        raise RecordingFormatError(
            f"{path}: 'channel_positions' has shape {positions3.shape}; expected (n_channels, 3)"
        )
    num_channels = positions3.shape[0]
    plane = (info.get("electrodes") or {}).get("plane") or "yz"
    if plane not in _PLANE_COLUMNS:
        raise RecordingFormatError(
            f"{path}: info/electrodes/plane is {plane!r}; expected one of {list(_PLANE_COLUMNS)}"
        )
    across, depth, normal = _PLANE_COLUMNS[plane]

    dataset = f["recordings"]
    layout, array = _orient(dataset, num_channels, version, path)
    gain = dataset.attrs.get("gain_to_uV")
    if gain is None:
        gain = (info.get("recordings") or {}).get("gain")
    gain = 1.0 if gain is None else float(np.asarray(gain))
    extras = f.get("esort_jax")
    extras = extras if isinstance(extras, _h5py().Group) else None

    channel_ids = None
    if extras is not None and "channel_ids" in extras:
        channel_ids = _read_array(extras["channel_ids"])
    metadata = {}
    if extras is not None and "recording_metadata" in extras:
        metadata = json.loads(_decode(extras["recording_metadata"][()]))
    recording = Recording(
        traces=HDF5Traces(array, f, gain_to_uv=gain),
        sampling_frequency=fs,
        channel_positions=positions3[:, [across, depth]],
        probe=_probe(positions3[:, [across, depth]], info.get("electrodes") or {}),
        channel_ids=channel_ids,
        metadata={
            **metadata,
            "source": str(path),
            "format": "mearec",
            "mearec_version": version,
            "mearec_layout": layout,
            "gain_to_uv": gain,
            "mearec_info": to_jsonable(info),
        },
    )
    columns = (across, depth, normal)
    truth = _read_spikes(f, extras, path, fs, time_to_sample, gain, columns, num_channels)
    _check_spikes_inside(path, truth, recording.num_samples)
    return recording, truth


def _check_spikes_inside(path: Path, truth: Sorting, num_samples: int) -> None:
    if truth.num_spikes and int(truth.samples.max()) >= num_samples:
        late = int(np.argmax(truth.samples))
        raise RecordingFormatError(
            f"{path}: spike of unit {truth.unit_ids[truth.unit_indices[late]]} at sample {int(truth.samples[late])} "
            f"is beyond the recording's {num_samples} samples (spiketrains/*/times vs 'recordings')"
        )


def _orient(dataset: Any, num_channels: int, version: str, path: Path) -> tuple[str, Any]:
    if dataset.ndim != 2:
        raise RecordingFormatError(f"{path}: 'recordings' has shape {dataset.shape}; expected 2-D")
    rows, cols = dataset.shape
    old = _version_tuple(version) < (1, 5)
    if cols == num_channels and (rows != num_channels or not old):
        return "time-major", dataset
    if rows == num_channels:
        return "channel-major", _ChannelMajor(dataset)
    raise RecordingFormatError(
        f"{path}: 'recordings' has shape {dataset.shape}, which matches neither "
        f"(n_samples, {num_channels}) nor ({num_channels}, n_samples) for the {num_channels} "
        f"rows of 'channel_positions'"
    )


def _read_spikes(f, extras, path, fs, time_to_sample, gain, columns, num_channels):
    group = f["spiketrains"]
    names = sorted(group.keys(), key=_unit_sort_key)
    samples, units, annotations = [], [], []
    for index, name in enumerate(names):
        times = group[name].get("times")
        if times is None:
            raise RecordingFormatError(f"{path}: dataset 'spiketrains/{name}/times' is missing")
        times = np.asarray(times[()], dtype=np.float64).reshape(-1)
        bad = times[~np.isfinite(times) | (times < 0)]
        if bad.size:
            raise RecordingFormatError(f"{path}: spiketrains/{name}/times holds {bad[0]} s; times must be finite and >= 0")
        samples.append(_times_to_samples(times, fs, time_to_sample))
        units.append(np.full(times.size, index, dtype=np.int64))
        ann = group[name].get("annotations")
        annotations.append(_read_group(ann) if isinstance(ann, _h5py().Group) else {})
    samples = np.concatenate(samples) if samples else np.zeros(0, np.int64)
    units = np.concatenate(units) if units else np.zeros(0, np.int64)
    order = np.lexsort((units, samples))
    samples, units = samples[order], units[order]
    unit_ids = np.asarray([int(n) if n.isdigit() else n for n in names] or np.zeros(0, np.int64))
    if extras is not None and "unit_ids" in extras:
        stored = _read_array(extras["unit_ids"])
        if stored.shape == (len(names),):
            unit_ids = stored
    common = dict(samples=samples, unit_indices=units, unit_ids=unit_ids, sampling_frequency=fs)
    marked = extras is not None and "is_ground_truth" in extras
    if marked and not bool(extras["is_ground_truth"][()]):
        return Sorting(**common)

    table = _mearec_unit_table(f, annotations, gain, columns, num_channels)
    if extras is not None and "unit_table" in extras:
        for name, dataset in extras["unit_table"].items():
            table[name] = _read_array(dataset)
    drift = None
    if extras is not None and "drift" in extras:
        drift = Drift(
            samples=extras["drift/samples"][()],
            displacement_um=extras["drift/displacement_um"][()],
        )
    elif "drift_list" in f:
        drift = _mearec_drift(f, fs, len(names), columns[1])
    scales = None
    if extras is not None and "spike_amplitude_scales" in extras:
        scales = np.asarray(extras["spike_amplitude_scales"][()], dtype=np.float32)
        if scales.shape != samples.shape:
            raise RecordingFormatError(
                f"{path}: esort_jax/spike_amplitude_scales has {scales.size} entries "
                f"for {samples.size} spikes"
            )
    return GroundTruth(**common, unit_table=table, drift=drift, spike_amplitude_scales=scales)


def _mearec_unit_table(f, annotations, gain, columns, num_channels) -> dict:
    """Unit table columns that MEArec's own datasets and annotations provide for every unit."""
    num_units = len(annotations)
    table: dict[str, np.ndarray] = {}
    if num_units == 0:
        return table
    across, depth, normal = columns
    locations = f["template_locations"][()] if "template_locations" in f else None
    drifting_templates = locations is not None and np.ndim(locations) == 3

    positions = []
    for index, ann in enumerate(annotations):
        soma = ann.get("soma_position")
        if soma is None and locations is not None and len(locations) == num_units:
            soma = locations[index]
        soma = None if soma is None else np.asarray(soma, dtype=np.float64)
        if soma is not None and soma.ndim == 2:  # drifting: a position per drift step; the middle
            soma = soma[soma.shape[0] // 2]
        positions.append(soma if soma is not None and soma.shape == (3,) else None)
    if all(p is not None for p in positions):
        table["position_um"] = np.stack(positions)[:, [across, depth, normal]]

    kinds = [ann.get("cell_type", ann.get("bintype")) for ann in annotations]
    if all(k is not None for k in kinds):
        names = {"E": "exc", "I": "inh"}
        table["cell_type"] = np.asarray([names.get(str(k), str(k)) for k in kinds])
    for source, column in (("snr", "snr"), ("fr", "firing_rate_hz")):
        values = [ann.get(source) for ann in annotations]
        if all(v is not None and np.size(v) == 1 for v in values):
            table[column] = np.asarray([float(np.asarray(v)) for v in values])

    peaks = f["voltage_peaks"][()] if "voltage_peaks" in f else None
    if peaks is not None and np.shape(peaks) == (num_units, num_channels):
        channel = np.argmax(peaks, axis=1)
        table["peak_channel"] = channel.astype(np.int64)
        table["peak_amplitude_uv"] = peaks[np.arange(num_units), channel].astype(np.float64) * gain
    elif "templates" in f:
        amplitudes = _template_amplitudes(
            f["templates"], num_units, num_channels, drifting_templates
        )
        if amplitudes is not None:
            channel = np.argmax(amplitudes, axis=1)
            table["peak_channel"] = channel.astype(np.int64)
            table["peak_amplitude_uv"] = amplitudes[np.arange(num_units), channel] * gain
    return table


def _template_amplitudes(templates, num_units, num_channels, drifting) -> np.ndarray | None:
    """[N, C] max |template| per channel (middle drift step, first jitter), read unit by unit."""
    shape = templates.shape
    if len(shape) not in (3, 4, 5) or shape[0] != num_units or shape[-2] != num_channels:
        return None
    amplitudes = np.zeros((num_units, num_channels))
    for unit in range(num_units):
        if len(shape) == 3:
            block = templates[unit]
        elif len(shape) == 4:  # drifting: (N, steps, C, S); else (N, jitters, C, S)
            block = templates[unit, shape[1] // 2 if drifting else 0]
        else:
            block = templates[unit, shape[1] // 2, 0]
        amplitudes[unit] = np.abs(np.asarray(block, dtype=np.float64)).max(axis=1)
    return amplitudes


def _mearec_drift(f, fs: float, num_units: int, depth_column: int) -> Drift | None:
    """Per-unit depth displacement from drift_list, built as MEArec's `extract_units_drift_vector`.

    Each drift signal k gives template-step offsets drift_vector_idxs_k(t) at drift_fs_k and a
    factor per unit; unit n sits at step mid + sum_k int(idxs_k(t) * factor_k[n]) of its
    template_locations. Displacement is relative to the middle step (where the templates of a
    static recording come from).
    """
    if "template_locations" not in f:
        return None
    locations = np.asarray(f["template_locations"][()], dtype=np.float64)
    if locations.ndim != 3 or locations.shape[0] != num_units:
        return None
    group = f["drift_list"]
    signals = [_read_group(group[k]) for k in sorted(group.keys(), key=_unit_sort_key)]
    if not signals:
        return None
    steps = locations.shape[1]
    middle = int(signals[0].get("drift_steps") or steps) // 2
    best = int(np.argmax([float(s["drift_fs"]) for s in signals]))
    main_fs = float(signals[best]["drift_fs"])
    times = np.arange(len(signals[best]["drift_vector_idxs"])) / main_fs
    summed = np.zeros((times.size, num_units), dtype=np.int64)
    for signal in signals:
        idxs = np.asarray(signal["drift_vector_idxs"], dtype=np.float64)
        signal_fs = float(signal["drift_fs"])
        if signal_fs != main_fs or idxs.size != times.size:
            idxs = np.interp(times, np.arange(idxs.size) / signal_fs + 0.5 / signal_fs, idxs)
        factors = np.asarray(signal["drift_factors"], dtype=np.float64).reshape(-1)
        if factors.size != num_units:
            return None
        summed += (idxs[:, None] * factors[None, :]).astype(np.int16)
    step_index = np.clip(summed + middle, 0, steps - 1)
    depth = locations[:, :, depth_column]  # [N, steps]
    displacement = depth[np.arange(num_units)[None, :], step_index] - depth[:, middle][None, :]
    return Drift(samples=np.round(times * fs).astype(np.int64), displacement_um=displacement)


def _probe(positions_2d: np.ndarray, electrodes: dict) -> Any:
    try:
        import probeinterface
    except ImportError:  # pragma: no cover - probeinterface is a dependency
        return None
    probe = probeinterface.Probe(ndim=2, si_units="um", model_name=electrodes.get("electrode_name"))
    shape, size = electrodes.get("shape"), electrodes.get("size")
    kwargs = {}
    if shape is not None and size is not None:
        size = np.asarray(size, dtype=np.float64).reshape(-1)
        params = {
            "circle": lambda: {"radius": float(size[0])},
            "square": lambda: {"width": 2 * float(size[0])},
            "rect": lambda: {"width": 2 * float(size[0]), "height": 2 * float(size[-1])},
        }.get(shape)
        if params is not None:
            kwargs = {"shapes": shape, "shape_params": params()}
    probe.set_contacts(positions_2d, **kwargs)
    probe.set_device_channel_indices(np.arange(positions_2d.shape[0]))
    if positions_2d.shape[0] > 1:
        try:
            probe.create_auto_shape(probe_type="tip")
        except Exception:  # a degenerate layout (all sites on one point) has no outline
            pass
    return probe


# --------------------------------------------------------------------------------------------
# writing


def write_mearec(
    path: str | os.PathLike,
    recording: Recording,
    ground_truth: GroundTruth | Sorting | None = None,
    *,
    overwrite: bool = False,
    chunk_samples: int = 65536,
    progress: bool = False,
) -> Path:
    """Write `recording` and its spike trains as a MEArec .h5 file, atomically.

    Traces are streamed through `recording.read` in chunks (float32 µV, gain_to_uV = 1).
    The probe is written in MEArec's y-z plane: channel_positions = (0, x, y). Unit table
    columns become the annotations MEArec tools know (soma_position, cell_type 'E'/'I', snr, fr),
    and everything else (unit ids, full table, drift, amplitude scales) goes to `esort_jax/`.
    Drift is not translated into MEArec's drift_list/template-step form.
    """
    import h5py

    path = Path(path)
    if path.suffix.lower() not in (".h5", ".hdf5"):
        raise ValueError(f"a MEArec file name ends in .h5 or .hdf5; got {path.name!r}")
    fs = recording.sampling_frequency
    num_samples, num_channels = recording.num_samples, recording.num_channels
    duration = _exact_duration(num_samples, fs)
    with atomic_path(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["mearec_version"] = MEAREC_LAYOUT_VERSION
        f.attrs["date"] = datetime.datetime.now().strftime("%y-%m-%d %H:%M:%S")
        f.attrs["writer"] = f"esort_jax {_version()}"
        _write_info(f, recording, ground_truth, duration)

        positions3 = np.zeros((num_channels, 3))
        positions3[:, 1:] = recording.channel_positions
        f.create_dataset("channel_positions", data=positions3)
        traces = f.create_dataset("recordings", shape=(num_samples, num_channels), dtype=np.float32)
        traces.attrs["gain_to_uV"] = 1.0
        timestamps = f.create_dataset("timestamps", shape=(num_samples,), dtype=np.float64)
        chunks = recording.iter_chunks(chunk_samples)
        if progress:
            from tqdm.auto import tqdm

            total = -(-num_samples // chunk_samples)
            chunks = tqdm(chunks, total=total, desc=f"writing {path.name}", unit="chunk")
        for start, block in chunks:
            stop = start + block.shape[0]
            traces[start:stop] = block
            timestamps[start:stop] = np.arange(start, stop) / fs

        extras = f.create_group("esort_jax")
        extras.attrs["format_version"] = 1
        extras["channel_ids"] = _h5_array(recording.channel_ids)
        extras["recording_metadata"] = json.dumps(to_jsonable(recording.metadata), default=str)
        spiketrains = f.create_group("spiketrains")
        if ground_truth is not None:
            _write_spikes(f, spiketrains, extras, ground_truth, fs, duration)
    return path


def _write_info(f, recording: Recording, ground_truth, duration: float) -> None:
    num_units = 0 if ground_truth is None else ground_truth.num_units
    info = {
        "recordings": {
            "fs": recording.sampling_frequency,
            "duration": duration,
            "dtype": "float32",
            "n_neurons": num_units,
            "gain": None,
            "adc_bit_depth": None,
            "lsb": None,
        },
        "spiketrains": {"duration": duration, "t_start": 0.0},
        "electrodes": {
            "electrode_name": getattr(recording.probe, "model_name", None) or "esort_jax",
            "description": "written by esort_jax",
            "plane": "yz",
            "sortlist": None,
            **(_contact_shape(recording.probe) or _DEFAULT_CONTACT),
        },
    }
    _write_dict(f, "info", info)


def _contact_shape(probe: Any) -> dict:
    """MEArec's electrode shape/size (size = half width, or radius) when every contact agrees."""
    if probe is None or not hasattr(probe, "contact_shapes"):
        return dict(_DEFAULT_CONTACT)
    shapes = set(np.asarray(probe.contact_shapes).tolist())
    if len(shapes) != 1:
        return {}
    shape, params = shapes.pop(), probe.contact_shape_params
    try:
        if shape == "circle":
            sizes = {float(p["radius"]) for p in params}
            return {"shape": "circle", "size": sizes.pop()} if len(sizes) == 1 else {}
        if shape == "square":
            sizes = {float(p["width"]) / 2 for p in params}
            return {"shape": "square", "size": sizes.pop()} if len(sizes) == 1 else {}
        if shape == "rect":
            sizes = {(float(p["width"]) / 2, float(p["height"]) / 2) for p in params}
            return {"shape": "rect", "size": list(sizes.pop())} if len(sizes) == 1 else {}
    except (KeyError, TypeError):
        return {}
    return {}


def _write_spikes(f, spiketrains, extras, truth, fs: float, duration: float) -> None:
    is_truth = isinstance(truth, GroundTruth)
    extras["is_ground_truth"] = is_truth
    extras["unit_ids"] = _h5_array(truth.unit_ids)
    table = truth.unit_table if is_truth else {}
    annotations: list[dict] = [{} for _ in range(truth.num_units)]
    if "position_um" in table:
        position = np.asarray(table["position_um"], dtype=np.float64)
        mearec = np.zeros((truth.num_units, 3))
        mearec[:, 1:] = position[:, :2]
        if position.shape[1] > 2:
            mearec[:, 0] = position[:, 2]
        f.create_dataset("template_locations", data=mearec)
        for ann, row in zip(annotations, mearec):
            ann["soma_position"] = row
    if "cell_type" in table:
        for ann, kind in zip(annotations, np.asarray(table["cell_type"]).astype(str)):
            ann["cell_type"] = {"exc": "E", "inh": "I"}.get(kind, kind)
            ann["bintype"] = ann["cell_type"]
    for column, name in (("snr", "snr"), ("firing_rate_hz", "fr")):
        if column in table:
            for ann, value in zip(annotations, np.asarray(table[column], dtype=np.float64)):
                ann[name] = float(value)
    for index in range(truth.num_units):
        unit = spiketrains.create_group(str(index))
        unit.create_dataset("times", data=_samples_to_times(truth.unit_samples(index), fs))
        unit["t_stop"] = duration
        _write_dict(unit, "annotations", annotations[index])
    if is_truth:
        group = extras.create_group("unit_table")
        for name, column in table.items():
            group[name] = _h5_array(column)
        if truth.drift is not None:
            extras["drift/samples"] = np.asarray(truth.drift.samples)
            extras["drift/displacement_um"] = np.asarray(truth.drift.displacement_um)
        if truth.spike_amplitude_scales is not None:
            extras["spike_amplitude_scales"] = truth.spike_amplitude_scales


# --------------------------------------------------------------------------------------------
# helpers


def _h5py():
    import h5py

    return h5py


def _times_to_samples(times: np.ndarray, fs: float, rule: str) -> np.ndarray:
    scaled = times * fs
    if rule == "round":
        return np.rint(scaled).astype(np.int64)
    return np.floor(scaled + _SAMPLE_EPS).astype(np.int64)


def _samples_to_times(samples: np.ndarray, fs: float) -> np.ndarray:
    """Seconds t with floor(t * fs) == round(t * fs) == sample exactly (float64)."""
    samples = np.asarray(samples, dtype=np.int64)
    times = samples / fs
    for _ in range(8):
        low = np.floor(times * fs) < samples
        if not low.any():
            break
        times[low] = np.nextafter(times[low], np.inf)
    return times


def _exact_duration(num_samples: int, fs: float) -> float:
    """A duration d with int(d * fs) == num_samples (how neo's MEArecRawIO counts samples)."""
    duration = num_samples / fs
    for _ in range(8):
        if int(duration * fs) >= num_samples:
            break
        duration = float(np.nextafter(duration, np.inf))
    return duration


def _unit_sort_key(name: str) -> tuple:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in str(version).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _version() -> str:
    from esort_jax import __version__

    return __version__


def _decode(value: Any) -> Any:
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return None if value == "null" else ([] if value == "[]" else value)
    return value


def _scalar(dataset: Any) -> Any:
    return _decode(dataset[()])


def _read_array(dataset: Any) -> np.ndarray:
    value = dataset[()]
    if isinstance(value, np.ndarray) and value.dtype.kind in ("O", "S"):
        text = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value.reshape(-1)]
        return np.asarray(text).reshape(value.shape)
    return np.asarray(_decode(value))


def _read_group(group: Any) -> dict:
    """A group as a nested dict: bytes decoded, 'null' -> None, '[]' -> [] (MEArec conventions)."""
    h5py = _h5py()
    out = {}
    for key, node in group.items():
        if isinstance(node, h5py.Group):
            out[key] = _read_group(node)
        else:
            value = node[()]
            if isinstance(value, np.ndarray) and value.dtype.kind in ("O", "S"):
                value = [_decode(v) for v in value.tolist()]
            else:
                value = _decode(value)
                if isinstance(value, np.generic):
                    value = value.item()
            out[key] = value
    return out


def _h5_array(values: Any) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind in ("U", "O"):
        text = [str(v) for v in values.reshape(-1)]
        return np.asarray(text, dtype=_h5py().string_dtype()).reshape(values.shape)
    return values


def _write_dict(parent: Any, name: str, data: dict) -> None:
    """Write a nested dict the way MEArec's save_dict_to_hdf5 does (None -> 'null')."""
    group = parent.require_group(name)
    for key, value in data.items():
        if isinstance(value, dict):
            _write_dict(group, key, value)
        elif value is None:
            group[key] = "null"
        elif isinstance(value, (list, tuple, np.ndarray)) and len(value) == 0:
            group[key] = "[]"
        elif isinstance(value, (list, tuple, np.ndarray)):
            group[key] = _h5_array(value)
        else:
            group[key] = value
