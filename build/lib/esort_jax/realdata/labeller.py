"""Spike labels from another sorter (Kilosort, Phy curation, any SpikeInterface sorting), with
what that sorter says about each unit, and the checks that they fit a recording.

    labels = load_labels("ks4_output/sorter_output")   # a SorterLabels
    check_labels_fit(labels, recording)     # sampling rate, spike times, channels: clear errors

`SorterLabels.unit_table` has one row per unit of `sorting.unit_ids`:

    label                  'good' | 'mua' | 'noise' | 'unsorted' (Phy's curation, else the
                           sorter's own label such as Kilosort's KSLabel, else 'unsorted')
    spike_count            spikes of the unit in the whole sorting
    firing_rate_hz         spike_count / the duration the rate is taken over (`rate_span_s`)
    peak_channel           channel (index into the recording's channels) where the unit's
                           template is largest; -1 when unknown
    template_peak_to_peak  peak-to-peak of that template on that channel, in the units of the
                           sorter's templates (whitened units for Kilosort); NaN when unknown
    ...                    the sorter's own per-unit columns (Kilosort: Amplitude, ContamPct, ...)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from esort_jax.recording import GroundTruth, Recording, Sorting
from esort_jax.windows import LabelError

__all__ = [
    "UNIT_LABELS",
    "SorterLabels",
    "LabelFitError",
    "make_unit_table",
    "unit_label",
    "check_labels_fit",
    "load_labels",
    "labels_from_sorting",
    "labels_from_spikeinterface",
]

UNIT_LABELS = ("good", "mua", "noise", "unsorted")


class LabelFitError(LabelError):
    """Labels that do not fit the recording: another sampling rate, spikes outside it, channels
    it does not have. The message names the file and field."""


@dataclasses.dataclass(frozen=True, eq=False)
class SorterLabels:
    """A sorter's spikes plus its per-unit table and where they came from.

    Attributes:
      sorting: the spikes (sample indices; unit ids as the sorter numbered them).
      unit_table: per-unit columns (see the module doc), each with one row per unit.
      source: provenance: 'kind' ('phy' | 'spikeinterface' | 'sorting' | 'ground_truth'),
        'path' when read from disk, and reader notes.
      times_field, rate_field: how errors name the spike-time and sampling-rate fields
        (e.g. 'spike_times.npy', 'params.py: sample_rate').
      channel_references: (field, channel count it refers to) pairs, e.g.
        ('channel_map.npy', 1 + its highest channel index); checked against the recording.
      sorter_seconds: the sorter's run time when known (e.g. from SpikeInterface's
        spikeinterface_log.json), else None.
    """

    sorting: Sorting
    unit_table: dict
    source: dict = dataclasses.field(default_factory=dict)
    times_field: str = "spike times"
    rate_field: str = "sampling rate"
    channel_references: tuple = ()
    sorter_seconds: float | None = None

    def __post_init__(self):
        for name, column in self.unit_table.items():
            if len(column) != self.sorting.num_units:
                raise ValueError(f"unit_table column {name!r} has {len(column)} rows; expected {self.sorting.num_units}")

    @property
    def unit_ids(self) -> np.ndarray:
        return self.sorting.unit_ids

    @property
    def has_labels(self) -> bool:
        """True when at least one unit carries a curation label (good / mua / noise)."""
        return bool(np.isin(np.asarray(self.unit_table["label"]), ("good", "mua", "noise")).any())

    def table_rows(self) -> list[dict]:
        """The unit table as a list of JSON-able dicts, one per unit."""
        columns = {k: np.asarray(v) for k, v in self.unit_table.items()}
        rows = []
        for i, unit in enumerate(self.sorting.unit_ids.tolist()):
            row = {"unit_id": unit}
            for name, values in columns.items():
                value = values[i]
                row[name] = value.item() if isinstance(value, np.generic) else value
            rows.append(row)
        return rows


def unit_label(curated: Any, sorter_label: Any = None) -> str:
    """One unit's label: Phy's curation ('group'/'quality') if it is good/mua/noise, else the
    sorter's own label (e.g. KSLabel) if it is, else 'unsorted'."""
    for value in (curated, sorter_label):
        text = str(value).strip().lower() if value is not None else ""
        if text in ("good", "mua", "noise"):
            return text
    return "unsorted"


def make_unit_table(
    sorting: Sorting,
    *,
    labels: np.ndarray | None = None,
    duration_s: float | None = None,
    extra: dict | None = None,
) -> tuple[dict, float]:
    """(unit table, rate_span_s): labels (default 'unsorted'), spike counts, firing rates over
    `duration_s` (default: up to the last spike), plus `extra` columns. peak_channel and
    template_peak_to_peak default to unknown (-1, NaN) unless `extra` gives them."""
    n = sorting.num_units
    counts = sorting.spike_counts().astype(np.int64)
    if duration_s is None:
        duration_s = (int(sorting.samples.max()) + 1) / sorting.sampling_frequency if sorting.num_spikes else 0.0
    rates = counts / duration_s if duration_s > 0 else np.zeros(n)
    table = {
        "label": np.asarray(["unsorted"] * n if labels is None else labels, dtype=object),
        "spike_count": counts,
        "firing_rate_hz": rates.astype(np.float64),
        "peak_channel": np.full(n, -1, dtype=np.int64),
        "template_peak_to_peak": np.full(n, np.nan),
    }
    for name, column in (extra or {}).items():
        table[name] = np.asarray(column)
    return table, float(duration_s)


def check_labels_fit(labels: SorterLabels, recording: Recording) -> None:
    """LabelFitError unless the labels fit `recording`: same sampling rate, every spike time in
    [0, num_samples), every channel they refer to present. Messages name the file and field."""
    where = f" ({labels.source['path']})" if labels.source.get("path") else ""
    fs_rec, fs_lab = recording.sampling_frequency, labels.sorting.sampling_frequency
    if abs(fs_rec - fs_lab) > 1e-6 * fs_rec:
        raise LabelFitError(
            f"{labels.rate_field} is {fs_lab:g} Hz but the recording is sampled at {fs_rec:g} Hz{where}; "
            "the labels were made for another recording or another stream"
        )
    num_samples = recording.num_samples
    sorting = labels.sorting
    outside = (sorting.samples < 0) | (sorting.samples >= num_samples)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        unit = sorting.unit_ids[sorting.unit_indices[first]]
        units = np.unique(sorting.unit_indices[outside]).size
        raise LabelFitError(
            f"{labels.times_field}: spike time(s) outside the recording{where}: the first, spike "
            f"#{first} in time order (unit {unit}), is at sample {int(sorting.samples[first])} but the "
            f"recording has {num_samples} samples ({recording.duration_s:.6g} s at {fs_rec:g} Hz); "
            f"{int(outside.sum())} spike(s) of {units} unit(s) lie outside. Were the labels made for "
            "another (longer) recording?"
        )
    for field, count in labels.channel_references:
        if count > recording.num_channels:
            raise LabelFitError(
                f"{field}: refers to {count} channels (highest index {count - 1}) but the recording "
                f"has {recording.num_channels} channels{where}"
            )


# ----------------------------------------------------------------------------------------------
# Reading a labeller's output

_EXPECTED = (
    "expected a Phy/Kilosort folder (spike_times.npy, spike_clusters.npy, params.py), a SpikeInterface "
    "sorting folder, a .npz sorting or an esort_jax recording folder with ground truth"
)


def load_labels(
    source: Any,
    *,
    duration_s: float | None = None,
    sorter_seconds: float | None = None,
    allow_pickle: bool = False,
) -> SorterLabels:
    """SorterLabels from a path or object (see the module doc). `duration_s` is what firing
    rates are taken over (the recording's; default up to the last spike); `sorter_seconds`
    overrides the recorded run time of the sorter; `allow_pickle` trusts a SpikeInterface
    folder's pickles (they run code: off by default, see esort_jax.io.untrusted)."""
    labels = _load(source, duration_s, allow_pickle)
    if sorter_seconds is not None:
        labels = dataclasses.replace(labels, sorter_seconds=float(sorter_seconds))
    return labels


def _load(source: Any, duration_s: float | None, allow_pickle: bool = False) -> SorterLabels:
    if isinstance(source, SorterLabels):
        return source
    if isinstance(source, Sorting):
        return labels_from_sorting(source, duration_s=duration_s)
    if isinstance(source, (str, os.PathLike)):
        return _load_path(Path(source), duration_s, allow_pickle)
    from spikeinterface.core import BaseSorting

    if isinstance(source, BaseSorting):
        return labels_from_spikeinterface(source, duration_s=duration_s)
    raise TypeError(
        f"labels: expected a path, a SpikeInterface sorting, a Sorting or SorterLabels; got {type(source).__name__}"
    )


def _load_path(path: Path, duration_s: float | None, allow_pickle: bool = False) -> SorterLabels:
    from esort_jax.io.folder import RecordingFormatError, is_recording_folder, read_recording_folder, read_sorting_npz
    from esort_jax.io.loader import is_spikeinterface_folder
    from esort_jax.io.phy import is_phy_folder, missing_phy_files, read_phy_folder

    if not path.exists():
        raise RecordingFormatError(f"{path}: labels: does not exist")
    if path.is_file():
        if path.suffix == ".npz":
            return labels_from_sorting(read_sorting_npz(path), duration_s=duration_s, path=path)
        raise RecordingFormatError(f"{path}: labels: a file ({path.suffix or 'no suffix'}); {_EXPECTED}")
    if is_phy_folder(path):
        return read_phy_folder(path, duration_s=duration_s)
    if is_spikeinterface_folder(path):
        from spikeinterface.core import BaseSorting

        from esort_jax.io.untrusted import UnsafeFileError, load_spikeinterface_folder

        try:  # from its JSON description: no pickles, no class the folder names, unless allowed
            obj = load_spikeinterface_folder(path, allow_pickle=allow_pickle)
        except UnsafeFileError:
            raise
        except RecordingFormatError as error:
            raise RecordingFormatError(f"{path}: labels: a SpikeInterface folder that does not load: {error}") from error
        if not isinstance(obj, BaseSorting):
            raise RecordingFormatError(f"{path}: labels: holds a SpikeInterface {type(obj).__name__}, not a sorting")
        labels = labels_from_spikeinterface(obj, duration_s=duration_s, path=path)
        return labels
    if is_recording_folder(path):
        _, truth = read_recording_folder(path)
        if truth is None:
            raise RecordingFormatError(f"{path}: labels: an esort_jax recording folder without ground truth")
        return labels_from_sorting(truth, duration_s=duration_s, path=path)
    partial = [name for name in ("spike_times.npy", "params.py", "spike_clusters.npy", "spike_templates.npy")
               if (path / name).is_file()]
    if partial:  # looks like a Phy folder with files missing: say which
        read_phy_folder(path)  # raises PhyFormatError naming the missing files
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    raise RecordingFormatError(
        f"{path}: labels: not recognised: a folder containing [{', '.join(names[:12]) or 'nothing'}"
        f"{', ...' if len(names) > 12 else ''}]; {_EXPECTED} (as a Phy folder it lacks "
        f"{', '.join(missing_phy_files(path))})"
    )


def labels_from_sorting(
    sorting: Sorting, *, duration_s: float | None = None, path: Path | None = None
) -> SorterLabels:
    """Labels without curation ('unsorted' units) from our Sorting or GroundTruth."""
    table, rate_span = make_unit_table(sorting, duration_s=duration_s)
    if isinstance(sorting, GroundTruth) and "peak_channel" in sorting.unit_table:
        table["peak_channel"] = np.asarray(sorting.unit_table["peak_channel"], dtype=np.int64)
    kind = "ground_truth" if isinstance(sorting, GroundTruth) else "sorting"
    plain = Sorting(sorting.samples, sorting.unit_indices, sorting.unit_ids, sorting.sampling_frequency)
    return SorterLabels(
        sorting=plain, unit_table=table,
        source={"kind": kind, **({"path": str(Path(path).resolve())} if path else {}), "rate_span_s": rate_span},
        times_field=f"{path}: spike samples" if path else "labels: spike samples",
        rate_field=f"{path}: sampling_frequency" if path else "labels: sampling_frequency",
    )


def labels_from_spikeinterface(
    si_sorting: Any, *, duration_s: float | None = None, path: Path | None = None
) -> SorterLabels:
    """Labels from a SpikeInterface sorting; unit labels from its 'quality' property (Phy
    curation) else 'KSLabel' when present."""
    from esort_jax.io.phy import sorter_run_seconds
    from esort_jax.io.spikeinterface import from_spikeinterface_sorting

    sorting = from_spikeinterface_sorting(si_sorting)

    def prop(key):
        values = si_sorting.get_property(key)
        return [None] * sorting.num_units if values is None else list(values)

    labels = np.array([unit_label(q, k) for q, k in zip(prop("quality"), prop("KSLabel"))], dtype=object)
    table, rate_span = make_unit_table(sorting, labels=labels, duration_s=duration_s)
    where = str(path) if path else "SpikeInterface sorting"
    return SorterLabels(
        sorting=sorting, unit_table=table,
        source={"kind": "spikeinterface", "class": type(si_sorting).__name__,
                **({"path": str(Path(path).resolve())} if path else {}), "rate_span_s": rate_span},
        times_field=f"{where}: spike sample indices",
        rate_field=f"{where}: sampling_frequency",
        sorter_seconds=sorter_run_seconds(path) if path else None,
    )
