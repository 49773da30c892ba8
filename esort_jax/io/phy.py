"""Phy / Kilosort output folders: read a sorter's result as labels, write E-Sort's result.

Reading (`read_phy_folder`): params.py is Python that Phy and SpikeInterface `exec`; we parse it
without running it (`esort_jax.io.untrusted.read_python_literals`: literal assignments only,
anything else refused naming the line) before SpikeInterface's `read_phy` parses spike_times.npy,
spike_clusters.npy (else spike_templates.npy), params.py and the cluster_*.tsv tables; around it
we check what it does not: which required files are missing (named, with what was found), that
the arrays agree in length, and we build the unit table (label from Phy's `group` column,
else Kilosort's `KSLabel`; spike count; firing rate; peak channel and template peak-to-peak from
templates.npy + channel_map.npy [+ template_ind.npy, Kilosort 4: templates_ind.npy]) and the
channel references that `esort_jax.realdata.labeller.check_labels_fit` checks against the recording.
Clusters that spike_clusters.npy has but the cluster tables do not list are dropped by
`read_phy`; we report them.

Writing: `write_sorting_folder` (a SpikeInterface numpy sorting folder: `spikeinterface.load`
reads it) and `write_phy_folder` (SpikeInterface's `export_to_phy` on a SortingAnalyzer with
random spikes + templates [+ spike amplitudes, + principal components]), both atomic.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from esort_jax.config import require
from esort_jax.io.atomic import atomic_folder
from esort_jax.io.folder import RecordingFormatError
from esort_jax.io.untrusted import UnsafeFileError, read_python_literals
from esort_jax.realdata.labeller import SorterLabels, make_unit_table, unit_label
from esort_jax.recording import Recording, Sorting

__all__ = [
    "PhyFormatError",
    "PhyExportConfig",
    "is_phy_folder",
    "missing_phy_files",
    "read_phy_folder",
    "sorter_log",
    "sorter_run_seconds",
    "write_sorting_folder",
    "write_phy_folder",
    "template_similarity",
    "attach_template_similarity",
]

CLUSTER_TABLES = ("cluster_group.tsv", "cluster_KSLabel.tsv", "cluster_info.tsv")


class PhyFormatError(RecordingFormatError):
    """A Phy/Kilosort folder that cannot be read; the message names the file and field."""


def missing_phy_files(path: str | os.PathLike) -> list[str]:
    """The required files `path` lacks (spike_times.npy, params.py, and spike_clusters.npy or
    else spike_templates.npy)."""
    path = Path(path)
    missing = [name for name in ("spike_times.npy", "params.py") if not (path / name).is_file()]
    if not (path / "spike_clusters.npy").is_file() and not (path / "spike_templates.npy").is_file():
        missing.append("spike_clusters.npy (or spike_templates.npy)")
    return missing


def is_phy_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and not missing_phy_files(path)


def read_phy_folder(path: str | os.PathLike, *, duration_s: float | None = None) -> SorterLabels:
    """Labels from a Phy / Kilosort output folder (see the module doc).

    `duration_s` (the recording's) is what firing rates are taken over; default: up to the
    last spike.
    """
    path = Path(path)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "a file"
        raise PhyFormatError(f"{path}: not a Phy/Kilosort folder: {what}")
    missing = missing_phy_files(path)
    if missing:
        raise PhyFormatError(
            f"{path}: not a Phy/Kilosort folder: missing {', '.join(missing)}; found {_listing(path)}"
        )
    params = _read_params(path)
    times = _load_vector(path, "spike_times.npy")
    clusters_file = "spike_clusters.npy" if (path / "spike_clusters.npy").is_file() else "spike_templates.npy"
    clusters = _load_vector(path, clusters_file)
    if clusters.size != times.size:
        raise PhyFormatError(
            f"{path / clusters_file}: has {clusters.size} entries but spike_times.npy has {times.size}; "
            "one spike per entry is expected"
        )
    if times.size and np.issubdtype(times.dtype, np.signedinteger) and times.min() < 0:
        raise PhyFormatError(f"{path / 'spike_times.npy'}: holds negative sample indices (min {int(times.min())})")

    from spikeinterface.extractors import read_phy

    try:
        si_sorting = read_phy(path)
    except Exception as error:
        raise PhyFormatError(f"{path}: SpikeInterface's read_phy failed: {type(error).__name__}: {error}") from error
    from esort_jax.io.spikeinterface import from_spikeinterface_sorting

    sorting = from_spikeinterface_sorting(si_sorting)
    original = si_sorting.get_property("original_cluster_id")
    original = np.asarray(si_sorting.unit_ids if original is None else original).astype(np.int64)

    notes = []
    unlisted = np.setdiff1d(np.unique(clusters), original)
    if unlisted.size:
        dropped = int(np.isin(clusters, unlisted).sum())
        notes.append(
            f"{unlisted.size} cluster(s) of {clusters_file} are not listed in the cluster tables and were "
            f"dropped with their {dropped} spike(s): {unlisted[:20].tolist()}"
        )
    labels = np.array(
        [unit_label(q, k) for q, k in zip(_property(si_sorting, "quality"), _property(si_sorting, "KSLabel"))],
        dtype=object,
    )
    peak_channel, peak_to_peak, references = _template_columns(path, original, clusters, clusters_file)
    extra = {"peak_channel": peak_channel, "template_peak_to_peak": peak_to_peak,
             "original_cluster_id": original, **_sorter_columns(si_sorting)}
    table, rate_span = make_unit_table(sorting, labels=labels, duration_s=duration_s, extra=extra)
    tables = [name for name in CLUSTER_TABLES if (path / name).is_file()]
    return SorterLabels(
        sorting=sorting,
        unit_table=table,
        source={
            "kind": "phy",
            "path": str(path.resolve()),
            "clusters_file": clusters_file,
            "cluster_tables": tables,
            "label_source": "group (Phy curation), else KSLabel" if tables else "none (all 'unsorted')",
            "params": {k: params[k] for k in ("sample_rate", "n_channels_dat", "dtype", "hp_filtered") if k in params},
            "rate_span_s": rate_span,
            "notes": notes,
            "sorter_name": sorter_log(path).get("sorter_name"),
        },
        times_field=f"{path / 'spike_times.npy'}",
        rate_field=f"{path / 'params.py'}: sample_rate",
        channel_references=tuple(references),
        sorter_seconds=sorter_run_seconds(path),
    )


def sorter_log(path: str | os.PathLike, name: str = "spikeinterface_log.json") -> dict:
    """SpikeInterface's `spikeinterface_log.json` (sorter_name, run_time, ...), or another of its
    run records (`name`, e.g. 'spikeinterface_params.json': sorter_name, sorter_params), from the
    folder or its parent (run_sorter's output folder holds `sorter_output/`); {} when there is
    none or it is not a JSON object."""
    path = Path(path)
    for folder in (path, path.parent):
        log_file = folder / name
        if log_file.is_file():
            try:
                data = json.loads(log_file.read_text())
            except (OSError, ValueError):
                return {}
            return data if isinstance(data, dict) else {}
    return {}


def sorter_run_seconds(path: str | os.PathLike) -> float | None:
    """The sorter's recorded run time ('run_time' of `sorter_log`), or None."""
    value = sorter_log(path).get("run_time")
    return float(value) if isinstance(value, (int, float)) else None


# ----------------------------------------------------------------------------------------------
# reading helpers


def _read_params(path: Path) -> dict:
    """params.py read without running it (esort_jax.io.untrusted.read_python_literals): Phy and
    SpikeInterface `exec` it, so the folder is refused before SpikeInterface's read_phy sees a
    params.py holding anything but literal assignments."""
    try:
        params = read_python_literals(path / "params.py")
    except UnsafeFileError:
        raise
    except RecordingFormatError as error:
        raise PhyFormatError(str(error)) from error
    rate = params.get("sample_rate")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
        raise PhyFormatError(
            f"{path / 'params.py'}: sample_rate must be a positive number; got {rate!r} "
            f"(keys found: {', '.join(sorted(params)) or 'none'})"
        )
    return params


def _load_vector(path: Path, name: str) -> np.ndarray:
    try:
        array = np.load(path / name, mmap_mode="r")
    except Exception as error:
        raise PhyFormatError(f"{path / name}: not a readable .npy file: {error}") from error
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise PhyFormatError(
            f"{path / name}: expected a 1-D integer array; got shape {array.shape}, dtype {array.dtype}"
        )
    return np.asarray(array)


def _property(si_sorting: Any, key: str) -> list:
    values = si_sorting.get_property(key)
    return [None] * si_sorting.get_num_units() if values is None else list(values)


def _sorter_columns(si_sorting: Any) -> dict:
    """The sorter's own scalar per-unit columns (Kilosort: Amplitude, ContamPct, ...)."""
    skip = {"quality", "KSLabel", "original_cluster_id", "group"}
    columns = {}
    for key in si_sorting.get_property_keys():
        values = np.asarray(si_sorting.get_property(key))
        if key in skip or values.ndim != 1 or values.dtype.kind not in "biuf":
            continue
        columns[key] = values
    return columns


def _template_columns(path: Path, cluster_ids: np.ndarray, clusters: np.ndarray, clusters_file: str):
    """(peak_channel [N], template_peak_to_peak [N], channel references) from templates.npy,
    channel_map.npy and template_ind.npy when present."""
    n = cluster_ids.size
    peak_channel, peak_to_peak = np.full(n, -1, np.int64), np.full(n, np.nan)
    references = []
    channel_map = None
    if (path / "channel_map.npy").is_file():
        channel_map = np.load(path / "channel_map.npy").reshape(-1).astype(np.int64)
        if channel_map.size:
            references.append((f"{path / 'channel_map.npy'}", int(channel_map.max()) + 1))
    if not (path / "templates.npy").is_file():
        return peak_channel, peak_to_peak, references
    templates = np.load(path / "templates.npy", mmap_mode="r")
    if templates.ndim != 3:
        raise PhyFormatError(
            f"{path / 'templates.npy'}: expected [templates, samples, channels]; got shape {templates.shape}"
        )
    columns = templates.shape[2]
    template_ind = None
    # Phy's name is template_ind.npy; Kilosort 4 writes templates_ind.npy.
    ind_name = next((n for n in ("template_ind.npy", "templates_ind.npy") if (path / n).is_file()), None)
    if ind_name is not None:
        template_ind = np.load(path / ind_name).astype(np.int64)
        if template_ind.shape != (templates.shape[0], columns):
            raise PhyFormatError(
                f"{path / ind_name}: shape {template_ind.shape} does not match templates.npy's "
                f"{(templates.shape[0], columns)}"
            )
    if channel_map is not None:
        highest = int(template_ind.max()) + 1 if template_ind is not None else columns
        if highest > channel_map.size:
            raise PhyFormatError(
                f"{path / (ind_name if template_ind is not None else 'templates.npy')}: refers to "
                f"{highest} channels but channel_map.npy lists {channel_map.size}"
            )
    elif template_ind is not None:
        references.append((f"{path / ind_name}", int(template_ind.max()) + 1))
    else:
        references.append((f"{path / 'templates.npy'}", columns))

    template_of = _template_per_cluster(path, cluster_ids, clusters, clusters_file, templates.shape[0])
    for i, t in enumerate(template_of):
        if t < 0:
            continue
        waveform = np.asarray(templates[t], dtype=np.float64)  # [samples, columns]
        ptp = waveform.max(axis=0) - waveform.min(axis=0)
        column = int(np.argmax(ptp))
        channel = int(template_ind[t, column]) if template_ind is not None else column
        if channel < 0:
            continue
        peak_channel[i] = int(channel_map[channel]) if channel_map is not None else channel
        peak_to_peak[i] = float(ptp[column])
    return peak_channel, peak_to_peak, references


def _template_per_cluster(path, cluster_ids, clusters, clusters_file, num_templates) -> np.ndarray:
    """Each cluster's template: the most frequent spike_templates.npy entry among its spikes
    (clusters merged in Phy have several), else the cluster id itself when it is a template."""
    if clusters_file == "spike_templates.npy":
        spike_templates = clusters
    elif (path / "spike_templates.npy").is_file():
        spike_templates = _load_vector(path, "spike_templates.npy")
    else:
        return np.where(cluster_ids < num_templates, cluster_ids, -1)
    if spike_templates.size != clusters.size:
        raise PhyFormatError(
            f"{path / 'spike_templates.npy'}: has {spike_templates.size} entries but {clusters_file} has {clusters.size}"
        )
    pairs, counts = np.unique(np.stack([clusters.astype(np.int64), spike_templates.astype(np.int64)]), axis=1,
                              return_counts=True)
    best = {}
    for (cluster, template), count in zip(pairs.T.tolist(), counts.tolist()):
        if count > best.get(cluster, (-1, -1))[0]:
            best[cluster] = (count, template)
    out = np.array([best.get(int(c), (0, -1))[1] for c in cluster_ids], dtype=np.int64)
    return np.where(out < num_templates, out, -1)


def _listing(path: Path, limit: int = 12) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not names:
        return "nothing"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return "[" + ", ".join(names[:limit]) + more + "]"


# ----------------------------------------------------------------------------------------------
# writing


@dataclasses.dataclass(frozen=True)
class PhyExportConfig:
    """What goes into the Phy folder (SpikeInterface's export_to_phy options).

    Attributes:
      enabled: write the Phy folder at all.
      compute_amplitudes: amplitudes.npy (one pass over every spike's traces).
      compute_pc_features: pc_features.npy (expensive: off by default).
      copy_binary: write the (preprocessed) traces as recording.dat so Phy can show them
        (as large as the recording in the export dtype); otherwise params.py points to the
        original binary file when there is one.
      max_spikes_per_unit: spikes averaged per unit template.
      ms_before, ms_after: template extent around each spike.
      sparse: sparse templates (channels near each unit), recommended above 64 channels.
    """

    enabled: bool = True
    compute_amplitudes: bool = True
    compute_pc_features: bool = False
    copy_binary: bool = False
    max_spikes_per_unit: int = 500
    ms_before: float = 1.0
    ms_after: float = 2.0
    sparse: bool = True

    def validate(self, where: str = "export.phy") -> None:
        require(self.max_spikes_per_unit >= 1, f"{where}.max_spikes_per_unit", "must be >= 1")
        require(self.ms_before > 0 and self.ms_after > 0, f"{where}.ms_before",
                f"ms_before and ms_after must be > 0; got {self.ms_before}, {self.ms_after}")
        if self.enabled and self.compute_pc_features:
            require_pca_backend()


def write_sorting_folder(sorting: Sorting, folder: str | os.PathLike, *, overwrite: bool = False,
                         properties: dict | None = None) -> Path:
    """`sorting` as a SpikeInterface numpy sorting folder (atomic); `spikeinterface.load`
    reads it back. `properties` become unit properties (one value per unit)."""
    from esort_jax.io.spikeinterface import to_spikeinterface_sorting

    si_sorting = to_spikeinterface_sorting(sorting)
    for key, values in (properties or {}).items():
        si_sorting.set_property(key, _plain_property(key, values))
    with atomic_folder(folder, overwrite=overwrite) as tmp:
        si_sorting.save(folder=tmp, overwrite=True)
    return Path(folder)


def _plain_property(key: str, values) -> np.ndarray:
    """A property as numbers or strings: SpikeInterface stores object arrays as pickles, which
    esort_jax (rightly) refuses to load from a folder (esort_jax.io.untrusted)."""
    array = np.asarray(values)
    if array.dtype.hasobject:
        if not all(isinstance(v, str) for v in array.ravel()):
            raise ValueError(f"property {key!r}: holds Python objects (not only strings or numbers), which "
                             "would be stored as a pickle; give numbers or strings")
        array = array.astype(str)
    return array


def require_pca_backend() -> None:
    """SpikeInterface fits pc_features.npy with scikit-learn, which the core install leaves out;
    say so before any work rather than deep inside the export."""
    import importlib.util

    if importlib.util.find_spec("sklearn") is None:
        raise ModuleNotFoundError(
            "compute_pc_features=true needs scikit-learn (SpikeInterface fits the principal components "
            "with it), which is not installed: `make baselines-venv` installs it, or "
            "`pip install scikit-learn`; or export without pc_features (compute_pc_features=false)"
        )


def write_phy_folder(
    sorting: Sorting,
    recording: Recording | Any,
    folder: str | os.PathLike,
    config: PhyExportConfig | None = None,
    *,
    overwrite: bool = False,
    seed: int = 0,
) -> Path:
    """`sorting` on `recording` (ours or a SpikeInterface recording) as a Phy folder, atomically.

    Units without spikes are left out (Phy has no use for them). `spikeinterface.extractors.
    read_phy(folder)` gives back the same spikes and unit ids (via cluster_si_unit_ids.tsv).
    """
    config = config or PhyExportConfig()
    config.validate()
    from spikeinterface.core import BaseRecording, create_sorting_analyzer
    from spikeinterface.exporters import export_to_phy

    from esort_jax.io.spikeinterface import to_spikeinterface_recording, to_spikeinterface_sorting

    si_recording = recording if isinstance(recording, BaseRecording) else to_spikeinterface_recording(recording)
    si_sorting = to_spikeinterface_sorting(sorting).remove_empty_units()
    if si_sorting.get_num_units() == 0:
        raise ValueError(f"{folder}: no unit has a spike; nothing to write to a Phy folder")
    job = {"n_jobs": 1, "progress_bar": False}
    analyzer = create_sorting_analyzer(
        si_sorting, si_recording, format="memory", sparse=config.sparse, seed=seed, job_kwargs=job,
    )
    analyzer.compute("random_spikes", method="uniform", max_spikes_per_unit=config.max_spikes_per_unit, seed=seed)
    if config.compute_pc_features:  # principal components are fitted on stored waveforms
        analyzer.compute("waveforms", ms_before=config.ms_before, ms_after=config.ms_after, **job)
        analyzer.compute("templates", **job)
    else:
        analyzer.compute("templates", ms_before=config.ms_before, ms_after=config.ms_after, **job)
    attach_template_similarity(analyzer)
    with atomic_folder(folder, overwrite=overwrite) as tmp:
        export_to_phy(
            analyzer, tmp, compute_pc_features=config.compute_pc_features,
            compute_amplitudes=config.compute_amplitudes, copy_binary=config.copy_binary,
            remove_if_exists=True, verbose=False, use_relative_path=config.copy_binary, **job,
        )
    return Path(folder)


def template_similarity(templates_UxSxC: np.ndarray) -> np.ndarray:
    """[U, U] cosine similarity of templates (zero outside each unit's sparsity), as
    SpikeInterface's template_similarity computes it with method 'cosine', support 'union',
    no lag: 1 - cosine distance over the channels either template uses."""
    flat = np.asarray(templates_UxSxC, dtype=np.float64).reshape(len(templates_UxSxC), -1)
    norms = np.linalg.norm(flat, axis=1)
    denominator = np.outer(norms, norms)
    with np.errstate(divide="ignore", invalid="ignore"):
        similarity = np.where(denominator > 0, flat @ flat.T / denominator, 0.0)
    return similarity


def attach_template_similarity(analyzer: Any) -> None:
    """Give `analyzer` its 'template_similarity' extension (what export_to_phy writes as
    similar_templates.npy) computed with numpy: SpikeInterface's own compiles a numba kernel on
    first use in every process (10-30 s on two cores), longer than the rest of a small export."""
    from spikeinterface.core.template_tools import get_dense_templates_array
    from spikeinterface.postprocessing import ComputeTemplateSimilarity

    templates = get_dense_templates_array(analyzer, return_in_uV=analyzer.return_in_uV)
    extension = ComputeTemplateSimilarity(analyzer)
    extension.params = extension._set_params(method="cosine", max_lag_ms=0, support="union")
    extension.data = {"similarity": template_similarity(templates)}
    extension.run_info = {"run_completed": True}
    analyzer.extensions["template_similarity"] = extension
