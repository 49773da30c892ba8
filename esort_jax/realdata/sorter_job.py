"""One E-Sort run in a SpikeInterface sorter folder (what `run_sorter("esort", ...)` executes).

    log = run_job(si_recording, params, folder / "sorter_output")

The stages, each timed:
  preprocess   SpikeInterface's lazy chain (esort_jax.realdata.preprocess), with motion
               correction when enabled (its estimate and plot in motion/)
  labels       given (`labels`), or made by running `labeller` on [0, train_seconds) with
               esort_jax.realdata.baselines.run_baseline (its folder in labeller/)
  esort        esort_jax.realdata.workflow.esort_from_labels: quality filter, fit, threshold,
               sort of the whole recording split at train_end
  outputs      sorting/ (SpikeInterface folder, read back by the sorter), checkpoint/, esort.json,
               optionally phy/, sorting.nwb, and the analyzer with quality_metrics.csv and
               report.png (esort_jax.report.quality_report)

The returned log (also written to esort_timing.json) separates the labeller's time on its span
from E-Sort's time for the whole recording.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from esort_jax.config import ConfigError, to_dict
from esort_jax.io.atomic import write_json
from esort_jax.io.phy import PhyExportConfig, write_sorting_folder
from esort_jax.realdata.labeller import SorterLabels, labels_from_spikeinterface, load_labels
from esort_jax.realdata.preprocess import as_preprocessed, preprocess
from esort_jax.realdata.sorter_params import SorterJob
from esort_jax.realdata.workflow import LabelledSort, esort_from_labels, write_outputs

__all__ = ["TIMING_FILE", "SORTING_FOLDER", "run_job", "jax_device", "group_units"]

TIMING_FILE = "esort_timing.json"
SORTING_FOLDER = "sorting"


@contextlib.contextmanager
def jax_device(name: str) -> Iterator[None]:
    """JAX's default device for the block: 'auto' leaves JAX's choice; 'cpu' / 'gpu' / 'tpu'
    the first device of that platform (ConfigError naming `device` when there is none)."""
    if name == "auto":
        yield
        return
    import jax

    try:
        device = jax.devices(name)[0]
    except RuntimeError as error:
        raise ConfigError(f"device: no {name!r} device here ({error}); use 'auto' or 'cpu'") from None
    with jax.default_device(device):
        yield


def run_job(si_recording: Any, params: dict, folder: str | Path, *, verbose: bool = False) -> dict:
    """Sort `si_recording` with E-Sort as `params` say (module doc); outputs go to `folder`.
    Returns the timing log."""
    job = SorterJob.from_params(params)
    folder = Path(folder)
    seconds: dict[str, float] = {}
    with jax_device(job.device):
        started = time.perf_counter()
        config = job.stages["preprocess"]
        motion_folder = folder / "motion" if config.enabled and config.motion.enabled is not False else None
        si_preprocessed = preprocess(si_recording, config, motion_folder=motion_folder,
                                     labeller_correction=labeller_correction(job))
        recording = as_preprocessed(si_preprocessed, config, si_recording)
        seconds["preprocess"] = time.perf_counter() - started
        train_seconds = job.train_seconds_for(recording.duration_s)
        labeller_input = si_preprocessed if job.labeller_input == "preprocessed" else si_recording
        labels, labeller = obtain_labels(job, labeller_input, recording.duration_s, train_seconds, folder)
        if labeller is None:  # a labeller sorted this very recording: its units are all here
            labels = group_units(labels, si_recording, job.labels_group_property, verbose=verbose)
        checkpoint, init, backbone = resolve_checkpoint(job, recording)
        result = esort_from_labels(
            recording, labels, train_seconds=train_seconds, checkpoint=checkpoint, init=init, freeze=job.freeze,
            model=job.stages["model"], windows=job.stages["windows"], train=job.stages["train"],
            quality=job.stages["quality"], evaluation=job.stages["evaluation"], infer=job.stages["infer"],
            postprocess=job.stages["postprocess"], seed=job.seed, train_dir=folder / "train",
        )
        seconds.update(result.seconds)
        log = timing_log(result, seconds, labeller, backbone, recording.metadata.get("motion"))
        write_results(result, job, folder, labeller, log, si_preprocessed, verbose=verbose)
    return log


def labeller_correction(job: SorterJob) -> str | None:
    """Whether the labels come from a sorter that corrected motion itself (the labeller with its
    parameters, or the run_sorter folder given as labels): motion 'auto' then corrects too."""
    from esort_jax.realdata.motion import labeller_motion_correction, labels_motion_correction

    if job.labeller is not None:
        return labeller_motion_correction(job.labeller, job.labeller_params)
    return labels_motion_correction(job.labels) if isinstance(job.labels, (str, Path)) else None


def obtain_labels(job: SorterJob, si_recording: Any, duration_s: float, train_seconds: float,
                  folder: Path) -> tuple[SorterLabels, dict | None]:
    """(labels, labeller run summary or None): the given labels, or the labeller's sort of
    [0, train_seconds) of `si_recording`."""
    if job.labeller is None:
        return load_labels(job.labels, duration_s=duration_s, allow_pickle=job.allow_pickle), None
    from spikeinterface.sorters import read_sorter_folder

    from esort_jax.realdata.baselines import run_baseline

    train_end = int(round(train_seconds * si_recording.get_sampling_frequency()))
    require_span(train_end, si_recording.get_num_samples(), train_seconds)
    result = run_baseline(job.labeller, si_recording, folder / "labeller", span=(0, train_end),
                          params=job.labeller_params, n_jobs=job.n_jobs)
    si_sorting = read_sorter_folder(result.folder, register_recording=False, sorting_info=False)
    labels = labels_from_spikeinterface(si_sorting, duration_s=duration_s)
    labels.source.update(sorter_name=job.labeller, path=str(result.folder))
    summary = {"name": job.labeller, "version": result.version, "params": result.params,
               "span_samples": [0, train_end], "span_s": train_seconds, "run_time_s": result.sorter_seconds,
               "wall_s": result.wall_seconds, "num_units": int(labels.sorting.num_units),
               "num_spikes": int(labels.sorting.num_spikes)}
    return labels, summary


def require_span(train_end: int, num_samples: int, train_seconds: float) -> None:
    """ConfigError unless [0, train_end) lies strictly inside the recording."""
    if not 0 < train_end < num_samples:
        raise ConfigError(f"train_seconds: must lie inside the recording ({num_samples} samples); got {train_seconds}")


def group_units(labels: SorterLabels, si_recording: Any, key: str | None, *, verbose: bool = False) -> SorterLabels:
    """The units of `labels` whose property `key` equals the one value the recording's channels
    share (one shank of run_sorter_by_property); `labels` as they are when either side lacks it."""
    if key is None or key not in si_recording.get_property_keys():
        return labels
    values = np.unique(si_recording.get_property(key))
    unit_values = labels.unit_table.get(key)
    if unit_values is None:
        unit_values = _labels_property(labels, key)
    if values.size != 1 or unit_values is None:
        return labels
    keep = np.flatnonzero(np.asarray(unit_values).astype(str) == str(values[0]))
    if verbose:
        print(f"esort: {keep.size} of {labels.sorting.num_units} labelled units have {key} = {values[0]}")
    if keep.size == 0:
        raise ConfigError(f"labels_group_property: no labelled unit has {key} = {values[0]!r}, the value of this "
                          "recording's channels; set labels_group_property=None to use every unit")
    table = {name: np.asarray(column)[keep] for name, column in labels.unit_table.items()}
    return SorterLabels(sorting=labels.sorting.select_units(keep), unit_table=table,
                  source={**labels.source, "group": {key: values[0].item()}}, times_field=labels.times_field,
                  rate_field=labels.rate_field, channel_references=labels.channel_references,
                  sorter_seconds=labels.sorter_seconds)


def _labels_property(labels: SorterLabels, key: str) -> np.ndarray | None:
    """Property `key` of the SpikeInterface sorting folder the labels were read from."""
    path = labels.source.get("path")
    if labels.source.get("kind") != "spikeinterface" or not path:
        return None
    from esort_jax.io.untrusted import load_spikeinterface_folder

    values = load_spikeinterface_folder(path).get_property(key)
    return None if values is None else np.asarray(values)


def resolve_checkpoint(job: SorterJob, recording) -> tuple[str | None, str, dict]:
    """(checkpoint path or None, init, what was chosen and why) from job.checkpoint / job.init;
    'auto' picks a built backbone by probe geometry (esort_jax.backbones)."""
    if job.init == "scratch" or job.checkpoint is None:
        return None, "scratch", {"choice": "scratch", "message": "no pretrained backbone: init from scratch"}
    if job.checkpoint != "auto":
        return job.checkpoint, "transfer", {"choice": "given", "checkpoint": job.checkpoint}
    from esort_jax.backbones import pick_backbone

    pick = pick_backbone(recording.channel_positions, job.stages["model"],
                         sampling_frequency=recording.sampling_frequency)
    if pick is None:
        if job.init == "transfer":
            raise ConfigError("checkpoint: 'auto' found no built backbone for this probe and init='transfer'; "
                              "build one (python -m esort_jax.backbones build) or give a checkpoint folder")
        return None, "scratch", {"choice": "scratch", "message": "no built backbone fits this probe: scratch"}
    print(f"esort: {pick.message}")
    return str(pick.checkpoint), "transfer", pick.to_dict()


def timing_log(result: LabelledSort, seconds: dict, labeller: dict | None, backbone: dict, motion: dict | None) -> dict:
    """The log: the labeller's run on its span apart from E-Sort's work on the whole recording."""
    timing = result.timing()
    esort_total = sum(seconds.get(k, 0.0) for k in ("preprocess", "fit", "threshold", "sort_before", "sort_rest"))
    return {
        "labeller": labeller,
        "esort": {
            "seconds": {**seconds, "sort_whole_recording": seconds["sort_before"] + seconds["sort_rest"],
                        "total_whole_recording": esort_total},
            "recording_duration_s": timing["recording_duration_s"],
            "train_duration_s": timing["train_duration_s"],
            "sort_rest_realtime_factor": timing["sort_rest_realtime_factor"],
            "threshold": result.threshold,
            "num_units": int(result.sorting.num_units),
            "num_spikes": int(result.sorting.num_spikes),
        },
        "backbone": backbone,
        "motion": motion,
    }


def unit_properties(result: LabelledSort, labeller: dict | None) -> dict:
    """Per unit of E-Sort's sorting: the labeller unit it was trained from, its label there,
    and which labeller (or 'labels')."""
    ids = result.sorting.unit_ids
    return {
        "labeller_unit_id": np.asarray(ids),
        "labeller_label": np.asarray(result._labeller_labels()),
        "labeller": np.asarray([labeller["name"] if labeller else "labels"] * len(ids)),
    }


def write_results(result: LabelledSort, job: SorterJob, folder: Path, labeller: dict | None, log: dict,
                  si_preprocessed: Any, *, verbose: bool = False) -> None:
    """sorting/ (with unit_properties), checkpoint/, phy/, esort.json, the timing log, and the
    optional analyzer, report and NWB file."""
    write_outputs(result, folder, phy=PhyExportConfig(enabled=job.export_phy), overwrite=True, seed=job.seed)
    write_sorting_folder(result.sorting, folder / SORTING_FOLDER, overwrite=True,
                         properties=unit_properties(result, labeller))
    write_json(folder / "esort.json", {
        "threshold": result.threshold, "train_end": result.train_end, "units": result.selection.report(),
        "timing": result.timing(), "labels": result.labels.source, "labeller": labeller,
        "transfer": result.fitted.transfer_report.to_dict(),
        "configs": {name: to_dict(config) for name, config in job.stages.items()},
    })
    write_json(folder / TIMING_FILE, log)
    if (job.analyzer or job.export_nwb) and not si_preprocessed.has_probe():
        log["analyzer"] = "skipped: the recording has no probe (channel positions), which the analyzer needs"
        write_json(folder / TIMING_FILE, log)
    elif job.analyzer or job.export_nwb:
        from esort_jax.report.quality_report import after_sorting

        started = time.perf_counter()
        log["outputs"] = after_sorting(folder, si_preprocessed, analyzer=job.analyzer, nwb=job.export_nwb,
                                       n_jobs=job.n_jobs, verbose=verbose)
        log["esort"]["seconds"]["analyzer"] = time.perf_counter() - started
        write_json(folder / TIMING_FILE, log)
