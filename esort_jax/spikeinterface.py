"""E-Sort as a SpikeInterface sorter: importing this module registers "esort".

    import esort_jax.spikeinterface                      # registers the sorter
    from spikeinterface.sorters import run_sorter

    sorting = run_sorter("esort", recording, folder="esort_out", labeller="kilosort4", train_seconds=300)
    sorting = run_sorter("esort", recording, folder="esort_out", labels="ks4_out/sorter_output")

E-Sort is trained from labels: either a sorting you give (`labels`), or the output of another
SpikeInterface sorter (`labeller`) that it runs itself on the first `train_seconds` only. It then
sorts the whole recording (esort_jax.realdata.sorter_job; every parameter with its description:
`get_sorter_params_description("esort")`).

SpikeInterface 0.105 has no plugin entry point for sorters: `register()` adds `ESortSorter` to
the module-level registries `spikeinterface.sorters.sorterlist.sorter_full_list` and `sorter_dict`
(the objects run_sorter, read_sorter_folder, installed_sorters, get_default_sorter_params and
run_sorter_by_property look sorters up in), once, at import.

The folder is SpikeInterface's layout: spikeinterface_params.json, spikeinterface_recording.json,
spikeinterface_log.json (run_time, plus an 'esort' entry: the labeller's time on its span and
E-Sort's time on the whole recording) and sorter_output/ (sorting/, checkpoint/, esort.json,
motion/, labeller/, analyzer/, quality_metrics.csv, report.png, ...). The sorting carries the
unit properties labeller_unit_id, labeller_label and labeller.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from spikeinterface.sorters import BaseSorter

import esort_jax
from esort_jax.realdata.sorter_params import default_params, merge_params, params_description

__all__ = ["ESortSorter", "register"]


class ESortSorter(BaseSorter):
    """E-Sort (Han & Wang 2025) in JAX: a small network trained from a labeller's spikes on the
    first stretch of a recording, then run over all of it."""

    sorter_name = "esort"
    requires_locations = False
    gpu_capability = "nvidia-optional"
    requires_binary_data = False
    # JAX must not be forked once running; threads would share its two-core compute
    compatible_with_parallel = {"loky": True, "multiprocessing": False, "threading": False}
    handle_multi_segment = False
    sorter_description = (
        "E-Sort: an end-to-end neural network (shared temporal filters, a spatial filter, one output per unit) "
        "trained with transfer learning from a few labelled spikes per unit, here from another sorter's output on "
        "the first train_seconds, then evaluated at every sample of the whole recording with vectorised peak "
        "picking. Han & Wang, J. Neural Eng. 2025 (arXiv 2409.13067); JAX implementation esort_jax."
    )
    installation_mesg = "\nInstall esort_jax with:\n    >>> pip install <path or git URL of esort_jax>\n"

    @classmethod
    def _dynamic_params(cls):
        return default_params(), params_description()

    @classmethod
    def get_sorter_version(cls):
        return esort_jax.__version__

    @classmethod
    def is_installed(cls):
        return all(importlib.util.find_spec(m) is not None for m in ("jax", "flax", "optax", "orbax"))

    @classmethod
    def _check_params(cls, recording, output_folder, params):
        """Stage dicts completed with the defaults, every value validated (ConfigError naming the
        parameter), and a sorting object given as `labels` saved in the output folder (the
        parameters are stored as JSON)."""
        from esort_jax.realdata.sorter_params import SorterJob

        params = merge_params(params)
        params["labels"] = _labels_as_path(params.get("labels"), Path(output_folder))
        SorterJob.from_params(params)
        return params

    @classmethod
    def _setup_recording(cls, recording, sorter_output_folder, params, verbose):
        pass  # the recording is read back from spikeinterface_recording.json, lazily

    @classmethod
    def _run_from_folder(cls, sorter_output_folder, params, verbose):
        from esort_jax.realdata.sorter_job import run_job

        recording = cls.load_recording_from_folder(Path(sorter_output_folder).parent, with_warnings=False)
        run_job(recording, params, sorter_output_folder, verbose=verbose)

    @classmethod
    def run_from_folder(cls, output_folder, raise_error, verbose):
        """SpikeInterface's run, then the labeller's and E-Sort's times (esort_timing.json) added
        to spikeinterface_log.json under 'esort'."""
        from esort_jax.realdata.sorter_job import TIMING_FILE

        run_time = super().run_from_folder(output_folder, raise_error, verbose)
        output_folder = Path(output_folder)
        timing = output_folder / "sorter_output" / TIMING_FILE
        log_file = output_folder / "spikeinterface_log.json"
        if timing.is_file() and log_file.is_file():
            log = json.loads(log_file.read_text(encoding="utf8"))
            log["esort"] = json.loads(timing.read_text())
            log_file.write_text(json.dumps(log, indent=4), encoding="utf8")
        return run_time

    @classmethod
    def _get_result_from_folder(cls, sorter_output_folder):
        from esort_jax.io.untrusted import load_spikeinterface_folder
        from esort_jax.realdata.sorter_job import SORTING_FOLDER

        return load_spikeinterface_folder(Path(sorter_output_folder) / SORTING_FOLDER)


def _labels_as_path(labels, output_folder: Path):
    """A path as a string; a SpikeInterface or esort_jax sorting saved to
    `<output_folder>/labels_input` (numbers and strings properties kept) and that folder's path."""
    if labels is None or isinstance(labels, (str, Path)):
        return None if labels is None else str(labels)
    from spikeinterface.core import BaseSorting

    from esort_jax.io.phy import write_sorting_folder
    from esort_jax.io.spikeinterface import from_spikeinterface_sorting
    from esort_jax.recording import Sorting

    properties = {}
    if isinstance(labels, BaseSorting):
        for key in labels.get_property_keys():
            values = labels.get_property(key)
            if values.ndim == 1 and values.dtype.kind == "O" and all(isinstance(v, str) for v in values):
                values = values.astype(str)  # e.g. Phy's quality / KSLabel read as objects
            if values.ndim == 1 and values.dtype.kind in "biufU":
                properties[key] = values
        labels = from_spikeinterface_sorting(labels)
    if not isinstance(labels, Sorting):
        raise TypeError(f"labels: expected a path, a SpikeInterface sorting or an esort_jax Sorting; "
                        f"got {type(labels).__name__}")
    return str(write_sorting_folder(labels, output_folder / "labels_input", overwrite=True, properties=properties))


def register() -> None:
    """Add ESortSorter to SpikeInterface's sorter registries (idempotent)."""
    from spikeinterface.sorters import sorterlist

    if not any(s.sorter_name == ESortSorter.sorter_name for s in sorterlist.sorter_full_list):
        sorterlist.sorter_full_list.append(ESortSorter)
    sorterlist.sorter_dict[ESortSorter.sorter_name] = ESortSorter


register()
