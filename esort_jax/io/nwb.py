"""A sorting as an NWB file (pynwb): units table with spike times, electrodes and waveforms.

    write_nwb_sorting(analyzer, "sorting.nwb")          # from a SortingAnalyzer with templates

The file holds one electrode group (the probe) with one electrode per recording channel
(`rel_x`, `rel_y` in µm, the channel id as `channel_name`), and a units table: `spike_times`
(seconds), `electrodes` (the unit's channels in the analyzer's sparsity), `waveform_mean` and
`waveform_sd` (µV, [samples, channels] on every channel), plus the columns `unit_name` (the
sorting's unit id, NWB ids being integers) and every numeric or string unit property of the
sorting (e.g. labeller_unit_id). Written to a temporary name and renamed, so a file found at
`path` is complete. NWB recordings are read by esort_jax.io.loader (format 'nwb').
"""

from __future__ import annotations

import datetime
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_nwb_sorting"]


def write_nwb_sorting(analyzer: Any, path: str | os.PathLike, *, session_description: str = "E-Sort sorting",
                      session_start_time: datetime.datetime | None = None) -> Path:
    """Write the analyzer's sorting (with its templates) to the NWB file `path` (module doc)."""
    from pynwb import NWBHDF5IO, NWBFile

    from esort_jax.io.atomic import atomic_path

    start = session_start_time or datetime.datetime.now(datetime.timezone.utc)
    nwbfile = NWBFile(session_description=session_description, identifier=str(uuid.uuid4()),
                      session_start_time=start)
    _add_electrodes(nwbfile, analyzer)
    _add_units(nwbfile, analyzer)
    with atomic_path(path, overwrite=True) as temporary, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not end in '.nwb'")  # the temporary name
        with NWBHDF5IO(str(temporary), "w") as io:
            io.write(nwbfile)
    return Path(path)


def _add_electrodes(nwbfile, analyzer: Any) -> None:
    device = nwbfile.create_device(name="probe", description="the recording's probe")
    group = nwbfile.create_electrode_group(name="probe", description="every channel of the sorted recording",
                                           location="unknown", device=device)
    nwbfile.add_electrode_column(name="channel_name", description="the recording's channel id")
    for channel, (x, y) in zip(analyzer.channel_ids, analyzer.get_channel_locations()[:, :2]):
        nwbfile.add_electrode(group=group, location="unknown", rel_x=float(x), rel_y=float(y),
                              channel_name=str(channel))


def _unit_columns(sorting: Any) -> dict:
    """Numeric or string 1-D unit properties of `sorting`, as NWB columns."""
    columns = {}
    for key in sorting.get_property_keys():
        values = np.asarray(sorting.get_property(key))
        if values.ndim == 1 and values.dtype.kind in "biufU":
            columns[key] = values.astype(str) if values.dtype.kind == "U" else values
    return columns


def _add_units(nwbfile, analyzer: Any) -> None:
    sorting = analyzer.sorting
    templates = analyzer.get_extension("templates")
    mean, sd = templates.get_data(operator="average"), templates.get_data(operator="std")  # [U, S, C]
    columns = _unit_columns(sorting)
    nwbfile.add_unit_column(name="unit_name", description="the sorting's unit id")
    for key in columns:
        nwbfile.add_unit_column(name=key, description=f"unit property {key!r} of the sorting")
    mask = analyzer.sparsity.mask if analyzer.sparsity is not None else np.ones(mean.shape[::2], dtype=bool)
    fs = analyzer.sampling_frequency
    for i, unit in enumerate(sorting.unit_ids):
        spike_times = sorting.get_unit_spike_train(unit, segment_index=0) / fs
        nwbfile.add_unit(
            spike_times=spike_times.astype(np.float64), electrodes=np.flatnonzero(mask[i]).tolist(),
            waveform_mean=mean[i].astype(np.float32), waveform_sd=sd[i].astype(np.float32),
            unit_name=str(unit), **{key: values[i].item() for key, values in columns.items()},
        )
