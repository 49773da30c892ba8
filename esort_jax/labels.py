"""Spike labels from another sorter (Kilosort, Phy curation, any SpikeInterface sorting), with
what that sorter says about each unit, and the checks that they fit a recording.

    labels = esort_jax.io.labels.load_labels("ks4_output/sorter_output")   # a SorterLabels
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
from typing import Any

import numpy as np

from esort_jax.recording import Recording, Sorting
from esort_jax.windows import LabelError

__all__ = [
    "UNIT_LABELS",
    "SorterLabels",
    "LabelFitError",
    "make_unit_table",
    "unit_label",
    "check_labels_fit",
    "subset_units",
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


def subset_units(sorting: Sorting, unit_indices: np.ndarray) -> Sorting:
    """A Sorting with only the units at `unit_indices` (in that order), their spikes kept."""
    unit_indices = np.asarray(unit_indices, dtype=np.int64)
    new_index = np.full(sorting.num_units, -1, dtype=np.int64)
    new_index[unit_indices] = np.arange(unit_indices.size)
    keep = new_index[sorting.unit_indices] >= 0
    return Sorting(
        samples=sorting.samples[keep],
        unit_indices=new_index[sorting.unit_indices[keep]],
        unit_ids=sorting.unit_ids[unit_indices],
        sampling_frequency=sorting.sampling_frequency,
    )
