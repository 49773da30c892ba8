"""Probe files: probeinterface JSON, and .prb files read without running them.

    group = read_probe_file("probe.json", key="recording.probe")   # a probeinterface ProbeGroup

Errors (RecordingFormatError) start with the config key, name the file and say what is
missing or wrong (not valid JSON at line/column, no 'probes' list, a probe without its contact
positions, ...), where probeinterface would raise a bare KeyError. A .prb file is Python that
probeinterface's `read_prb` executes; here it is parsed with
`esort_jax.io.untrusted.read_python_literals` (literal assignments only).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from esort_jax.io.folder import RecordingFormatError

__all__ = ["read_probe_file"]

# What probeinterface's Probe.from_dict reads without a default.
_PROBE_KEYS = ("ndim", "si_units", "contact_positions", "contact_plane_axes", "contact_shapes",
               "contact_shape_params")


def read_probe_file(path: str | os.PathLike, key: str = "probe") -> Any:
    """The probeinterface ProbeGroup of a probeinterface JSON file or a .prb file (see the module
    doc); errors start with `key` and name the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RecordingFormatError(f"{key}: {path} does not exist" if not path.exists() else f"{key}: {path} is a folder")
    if path.suffix.lower() == ".prb":
        return _read_prb(path, key)
    _check_probe_json(path, key)
    import probeinterface

    try:
        return probeinterface.read_probeinterface(path)
    except Exception as error:
        raise RecordingFormatError(
            f"{key}: {path} is not a valid probeinterface file: {type(error).__name__}: {error}"
        ) from error


def _check_probe_json(path: Path, key: str) -> None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RecordingFormatError(
            f"{key}: {path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno} "
            "(a probe file is a probeinterface JSON or a .prb file)"
        ) from error
    except UnicodeDecodeError as error:
        raise RecordingFormatError(f"{key}: {path} is not JSON text ({error})") from error
    shape = 'a probeinterface JSON is {"specification": "probeinterface", "probes": [{...}, ...]}'
    if not isinstance(data, dict):
        raise RecordingFormatError(f"{key}: {path} holds a JSON {type(data).__name__}; {shape}")
    probes = data.get("probes")
    if not isinstance(probes, list) or not probes:
        found = "no 'probes' key" if "probes" not in data else f"'probes' is {json.dumps(probes)[:40]}"
        raise RecordingFormatError(
            f"{key}: {path} has {found} (top-level keys: {', '.join(map(str, data)) or 'none'}); "
            f"expected at least one probe: {shape}"
        )
    for index, probe in enumerate(probes):
        missing = [k for k in _PROBE_KEYS if not isinstance(probe, dict) or k not in probe]
        if missing:
            raise RecordingFormatError(f"{key}: {path}: probes[{index}] lacks {', '.join(missing)}")


def _read_prb(path: Path, key: str) -> Any:
    """A .prb file's channel groups as probes (what probeinterface's read_prb builds: circular
    5 µm contacts, an automatic tip outline, device channels from 'channels')."""
    from probeinterface import Probe, ProbeGroup

    from esort_jax.io.untrusted import read_python_literals

    groups = read_python_literals(path).get("channel_groups")
    if not isinstance(groups, dict) or not groups:
        raise RecordingFormatError(f"{key}: {path} has no 'channel_groups' dict (a .prb file defines one)")
    group_of_probes = ProbeGroup()
    for name, group in groups.items():
        try:
            channels = np.asarray(group["channels"], dtype=np.int64)
            positions = np.asarray([group["geometry"][c] for c in channels.tolist()], dtype=np.float64)
            probe = Probe(ndim=2, si_units="um")
            probe.set_contacts(positions=positions, shapes="circle", shape_params={"radius": 5})
            probe.create_auto_shape(probe_type="tip")
            probe.set_device_channel_indices(channels)
        except Exception as error:
            raise RecordingFormatError(
                f"{key}: {path}: channel group {name!r} needs 'channels' and a 2-D 'geometry' position for "
                f"each ({type(error).__name__}: {error})"
            ) from error
        group_of_probes.add_probe(probe)
    return group_of_probes
