"""One entry point for spike labels from another sorter: whatever holds them becomes `SorterLabels`.

    load_labels("ks4/sorter_output")     # a Phy / Kilosort folder
    load_labels("si_sorting_folder")     # a SpikeInterface-saved sorting folder
    load_labels(si_sorting)              # a SpikeInterface sorting object
    load_labels(sorting)                 # our Sorting / GroundTruth
    load_labels("labels.npz")            # esort_jax.io.write_sorting_npz's file
    load_labels("recording_folder")      # the ground truth of an esort_jax recording folder
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from esort_jax.io.folder import (
    RecordingFormatError,
    is_recording_folder,
    read_recording_folder,
    read_sorting_npz,
)
from esort_jax.io.loader import is_spikeinterface_folder
from esort_jax.io.phy import is_phy_folder, missing_phy_files, read_phy_folder, sorter_run_seconds
from esort_jax.labels import SorterLabels, make_unit_table, unit_label
from esort_jax.recording import GroundTruth, Sorting

__all__ = ["load_labels", "labels_from_sorting", "labels_from_spikeinterface"]

_EXPECTED = (
    "expected a Phy/Kilosort folder (spike_times.npy, spike_clusters.npy, params.py), a SpikeInterface "
    "sorting folder, a .npz sorting or an esort_jax recording folder with ground truth"
)


def load_labels(
    source: Any,
    *,
    duration_s: float | None = None,
    sorter_seconds: float | None = None,
) -> SorterLabels:
    """SorterLabels from a path or object (see the module doc). `duration_s` is what firing
    rates are taken over (the recording's; default up to the last spike); `sorter_seconds`
    overrides the recorded run time of the sorter."""
    labels = _load(source, duration_s)
    if sorter_seconds is not None:
        import dataclasses

        labels = dataclasses.replace(labels, sorter_seconds=float(sorter_seconds))
    return labels


def _load(source: Any, duration_s: float | None) -> SorterLabels:
    if isinstance(source, SorterLabels):
        return source
    if isinstance(source, Sorting):
        return labels_from_sorting(source, duration_s=duration_s)
    if isinstance(source, (str, os.PathLike)):
        return _load_path(Path(source), duration_s)
    from spikeinterface.core import BaseSorting

    if isinstance(source, BaseSorting):
        return labels_from_spikeinterface(source, duration_s=duration_s)
    raise TypeError(
        f"labels: expected a path, a SpikeInterface sorting, a Sorting or SorterLabels; got {type(source).__name__}"
    )


def _load_path(path: Path, duration_s: float | None) -> SorterLabels:
    if not path.exists():
        raise RecordingFormatError(f"{path}: labels: does not exist")
    if path.is_file():
        if path.suffix == ".npz":
            return labels_from_sorting(read_sorting_npz(path), duration_s=duration_s, path=path)
        raise RecordingFormatError(f"{path}: labels: a file ({path.suffix or 'no suffix'}); {_EXPECTED}")
    if is_phy_folder(path):
        return read_phy_folder(path, duration_s=duration_s)
    if is_spikeinterface_folder(path):
        import spikeinterface
        from spikeinterface.core import BaseSorting

        try:
            obj = spikeinterface.load(path)
        except Exception as error:
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
