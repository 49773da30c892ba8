"""E-Sort on a real recording, trained from another sorter's output on its first seconds.

    python experiments/sort_real.py recording.path=<recording folder> labels.path=<kilosort folder>/sorter_output
    python experiments/sort_real.py recording.path=<spikeglx run folder> labels.path=... train_seconds=300 init=scratch

Stages: open the recording (any SpikeInterface-readable format) and preprocess it lazily →
read the labels (Phy/Kilosort folder or SpikeInterface sorting) and the ground truth if given
(`truth.path`: anything carrying it, MEArec files included) and check they fit → keep the
units passing the quality filter on [0, train_seconds) → a pretrained backbone (`checkpoint`,
or one pretrained on a source synthesised on the recording's own probe, through the cache) →
fine-tune on those labels, choose the threshold on the training span's tail, sort the whole
recording (`esort_jax.realdata.workflow.esort_from_labels`) → agreement with the labelling sorter on the
rest, timing against the data's real time and the sorter's run time, optional ground-truth
scores (`truth.path`, or the recording's own).

Writes into the run folder: sorting/ (a SpikeInterface sorting folder), phy/ (a Phy folder,
unless export.phy.enabled=false), checkpoint/ (the trained network and its threshold, for
sort.py), train/ (training checkpoints) and results.json.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from esort_jax.backbones import pick_backbone
from esort_jax.config import ConfigError
from esort_jax.io.folder import RecordingFormatError
from esort_jax.io.loader import RecordingSource, load_ground_truth
from esort_jax.io.phy import PhyExportConfig
from esort_jax.realdata.labeller import check_labels_fit, labels_from_sorting, load_labels
from esort_jax.realdata.motion import labels_motion_correction
from esort_jax.realdata.preprocess import PreprocessConfig, preprocessed_recording
from esort_jax.realdata.workflow import esort_from_labels, write_outputs
from esort_jax.recording import Sorting
from esort_jax.report.tables import labelled_sort_footer, labelled_sort_header, labelled_sort_table
from esort_jax.windows import LabelError
from experiments._common import Run, prepare_process
from experiments._plans import SortRealPlan, read_plan
from experiments._report import log_scalars, show
from experiments._stages import pretrained_on_geometry


def _recording_entry(spec: RecordingSource, recording) -> dict:
    """results.json's `recording`: where it came from, its shape, how it was preprocessed."""
    return {"path": str(Path(str(spec.path)).expanduser().resolve()), "format": spec.format,
            "num_channels": recording.num_channels, "sampling_frequency": recording.sampling_frequency,
            "duration_s": recording.duration_s, "preprocess": recording.metadata.get("preprocess", [])}


def _read_truth(path: str, recording, allow_pickle: bool) -> Sorting:
    """The ground truth at `truth.path` (anything esort_jax.io.load_ground_truth reads: a recording
    folder or MEArec file with ground truth, a SpikeInterface sorting, a Phy folder, a .npz
    sorting), checked against the recording (sampling rate, spike times); read before any
    training so a truth that does not load or fit stops the run at once. ConfigError naming
    `truth.path` otherwise."""
    folder = Path(path).expanduser()
    try:
        truth = load_ground_truth(folder, allow_pickle=allow_pickle)
        check_labels_fit(labels_from_sorting(truth, path=folder), recording)
    except (RecordingFormatError, LabelError) as error:  # UnsafeFileError is a RecordingFormatError
        raise ConfigError(f"truth.path: {error}") from error
    return truth


@hydra.main(version_base=None, config_path="../conf", config_name="sort_real")
def main(cfg: DictConfig) -> dict:
    with Run(cfg, "sort_real") as run:
        # Every config typed and validated before any work.
        seed = int(cfg.seed)
        spec = run.typed(RecordingSource, "recording")
        preprocess = run.typed(PreprocessConfig, "preprocess")
        config = run.pipeline_config()  # model, windows, train, transfer (freeze), evaluation, infer, postprocess
        phy = run.typed(PhyExportConfig, "export.phy")
        plan = read_plan(SortRealPlan, cfg)  # init, checkpoint, train_seconds, labels, truth
        tolerance_ms = config.evaluation.tolerance_ms

        with run.stage("open recording"):
            si_recording, own_truth = spec.open()
            recording = preprocessed_recording(si_recording, preprocess, motion_folder=run.dir / "motion",
                                               labeller_correction=labels_motion_correction(plan.labels.path))
        run.results["recording"] = _recording_entry(spec, recording)
        with run.stage("read labels"):
            labels = load_labels(Path(plan.labels.path).expanduser(), duration_s=recording.duration_s,
                                 sorter_seconds=plan.labels.sorter_seconds, allow_pickle=spec.allow_pickle)
            check_labels_fit(labels, recording)
            truth = _read_truth(plan.truth.path, recording, spec.allow_pickle) if plan.truth.path else own_truth
        run.results["labels"] = labels.summary()

        checkpoint = plan.checkpoint
        pick = (pick_backbone(recording.channel_positions, config.model, sampling_frequency=recording.sampling_frequency,
                              spatial_only=True) if plan.init == "transfer" and not checkpoint else None)
        if pick is not None:  # a built backbone (esort-backbones build) of this probe: no pretraining
            checkpoint, run.results["backbone"] = pick.checkpoint, pick.to_dict()
            print(f"[sort_real] {pick.message}")
        elif plan.init == "transfer" and not checkpoint:
            pretrain = run.pipeline_config(windows="pretrain.windows", train="pretrain.train")
            checkpoint, run.results["pretrain"] = pretrained_on_geometry(run, recording, preprocess, pretrain,
                                                                         seed=seed)
        with run.stage("fine-tune + sort"):
            result = esort_from_labels(
                recording, labels, train_seconds=plan.train_seconds, init=plan.init,
                checkpoint=str(checkpoint) if checkpoint else None, freeze=config.transfer.freeze,
                model=config.model, windows=config.windows, train=config.train, quality=plan.labels.filter,
                evaluation=config.evaluation, infer=config.infer, postprocess=config.postprocess, seed=seed,
                train_dir=run.dir / "train", clear_dropped_units=plan.labels.clear_dropped_units,
            )
        run.seconds.update(result.seconds)
        with run.stage("write outputs"):
            outputs = write_outputs(result, run.dir, phy=phy, overwrite=True, seed=seed)
        run.results.update(train_seconds=plan.train_seconds, **result.summary(tolerance_ms), outputs=outputs)

        if truth is not None:
            run.results["ground_truth"] = {"path": plan.truth.path or "the recording's own",
                                           **result.truth_scores(truth, tolerance_ms)}
        log_scalars(run, {"agreement": run.results["agreement"], "timing": run.results["timing"]})
        show(run, labelled_sort_header(run.results, tolerance_ms), labelled_sort_table(run.results),
             labelled_sort_footer(run.results))
    return run.results


if __name__ == "__main__":
    prepare_process()
    main()
