"""E-Sort on a real recording, trained from another sorter's output on its first seconds.

    python experiments/sort_real.py recording.path=/data/rec_si labels.path=/data/ks4/sorter_output
    python experiments/sort_real.py recording.path=/data/run_g0 labels.path=... train_seconds=300 init=scratch

Stages: open the recording (any SpikeInterface-readable format) and preprocess it lazily →
read the labels (Phy/Kilosort folder or SpikeInterface sorting) and check they fit → keep the
units passing the quality filter on [0, train_seconds) → a pretrained backbone (`checkpoint`,
or one pretrained on a source synthesised on the recording's own probe, through the cache) →
fine-tune on those labels, choose the threshold on the training span's tail, sort the whole
recording (`esort_jax.realdata.workflow.esort_from_labels`) → agreement with the labelling sorter on the
rest, timing against the data's real time and the sorter's run time, optional ground-truth
scores → sorting/, phy/, checkpoint/ and results.json in the run folder.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from data_gen import SynthesisConfig
from esort_jax.config import ConfigError, from_dict, to_dict
from esort_jax.backbones import pick_backbone
from esort_jax.evaluate import EvaluationResult, evaluate
from esort_jax.infer import InferenceConfig
from esort_jax.realdata.labeller import load_labels
from esort_jax.io.loader import RecordingSource
from esort_jax.io.phy import PhyExportConfig
from esort_jax.realdata.labeller import check_labels_fit
from esort_jax.model import ModelConfig
from esort_jax.evaluate import EvaluationConfig
from esort_jax.pipeline import PipelineConfig
from esort_jax.postprocess import PostprocessConfig
from esort_jax.realdata.preprocess import PreprocessConfig, as_recording, preprocessed_recording
from esort_jax.realdata.quality import QualityFilter
from esort_jax.realdata.workflow import esort_from_labels, write_outputs
from esort_jax.report.tables import scores_table
from esort_jax.runtime import artifacts
from esort_jax.runtime.artifacts import synthesis_key
from esort_jax.train import TrainConfig
from esort_jax.transfer import TransferConfig
from esort_jax.windows import WindowConfig
from experiments._common import Run, prepare_process, to_container
from experiments._data import obtain_recording
from experiments._stages import epoch_logger


def scores(result: EvaluationResult) -> dict:
    """Pooled and per-unit summary plus the per-unit rows, for results.json."""
    summary = result.to_dict()
    summary["per_unit"] = result.per_unit()
    return summary


def truth_scores(result, truth, tolerance_ms: float) -> dict:
    """E-Sort, the labelling sorter's kept units and all its units against ground truth on the
    rest, identities unknown (units paired by agreement)."""
    sortings = {"esort": result.sorting, "labeller_kept_units": result.selection.sorting,
                "labeller_all_units": result.labels.sorting}
    return {name: scores(evaluate(sorting, truth, tolerance_ms=tolerance_ms, identities="unknown",
                                  span=result.rest_span))
            for name, sorting in sortings.items()}


def pretrained_checkpoint(run, recording, preprocess: PreprocessConfig, config: PipelineConfig, seed: int):
    """A backbone pretrained on a source synthesised on `recording`'s probe geometry and
    sampling rate, preprocessed like it (cached by data, preprocessing, model, training, seed)."""
    if not np.all(np.isfinite(recording.channel_positions)):
        raise ConfigError(
            "checkpoint: the recording has no channel positions (no probe attached), so no source can be "
            "synthesised on its geometry; attach a probe (recording.probe), give a pretrained "
            "checkpoint, or use init=scratch"
        )
    data = run.typed(SynthesisConfig, "source.data").on_geometry(recording.channel_positions,
                                                                 recording.sampling_frequency)
    print(f"[sort_real] source synthesised on the recording's geometry ({recording.num_channels} sites)")
    source, source_truth, source_info = obtain_recording(run, "source", data=data)
    source = as_recording(source, preprocess)
    data_key = synthesis_key(data)
    if preprocess.enabled:
        data_key = {**data_key, "preprocess": to_dict(preprocess)}
    with run.stage("pretrain"):
        checkpoint, hit, summary = artifacts.pretrained_checkpoint(
            source, source_truth, config, seed=seed, cache_dir=run.cfg.cache_dir, data_key=data_key,
            force=bool(run.cfg.get("force_rebuild", False)), callback=epoch_logger(run, "pretrain"),
        )
    return checkpoint, {"checkpoint": str(checkpoint), "cache_hit": hit, "source": source_info,
                        "source_units": source_truth.num_units, **summary}


@hydra.main(version_base=None, config_path="../conf", config_name="sort_real")
def main(cfg: DictConfig) -> dict:
    with Run(cfg, "sort_real") as run:
        # Every config typed and validated before any work.
        seed = int(cfg.seed)
        spec = run.typed(RecordingSource, "recording")
        preprocess = run.typed(PreprocessConfig, "preprocess")
        quality = run.typed(QualityFilter, "labels.filter")
        model = run.typed(ModelConfig, "model")
        windows = run.typed(WindowConfig, "windows")
        train = run.typed(TrainConfig, "train")
        infer = run.typed(InferenceConfig, "infer")
        postprocess = run.typed(PostprocessConfig, "postprocess")
        evaluation = run.typed(EvaluationConfig, "evaluation")
        phy = run.typed(PhyExportConfig, "export.phy")
        init = str(cfg.init)
        checkpoint = cfg.get("checkpoint")
        transfer = from_dict(
            TransferConfig,
            {**(to_container(cfg.get("transfer")) or {}), "init": "scratch"}, "transfer",
        )
        if init not in ("transfer", "scratch"):
            raise ConfigError(f"init: must be 'transfer' or 'scratch'; got {init!r}")
        if init == "scratch" and checkpoint:
            raise ConfigError("checkpoint: given with init=scratch; drop it or use init=transfer")
        if checkpoint and not (Path(str(checkpoint)).expanduser() / "metadata.json").is_file():
            raise ConfigError(f"checkpoint: {checkpoint} is not a checkpoint folder (no metadata.json)")
        train_seconds = cfg.get("train_seconds")
        if not isinstance(train_seconds, (int, float)) or not train_seconds > 0:
            raise ConfigError(f"train_seconds: must be a number > 0; got {train_seconds!r}")
        labels_path = cfg.labels.get("path")
        if not labels_path:
            raise ConfigError("labels.path: required (a Phy/Kilosort folder or a SpikeInterface sorting folder)")
        sorter_seconds = cfg.labels.get("sorter_seconds")
        truth_path = cfg.truth.get("path") if cfg.get("truth") else None

        with run.stage("open recording"):
            si_recording, own_truth = spec.open()
            recording = preprocessed_recording(si_recording, preprocess, motion_folder=run.dir / "motion")
        run.results["recording"] = {
            "path": str(Path(str(spec.path)).expanduser().resolve()), "format": spec.format,
            "num_channels": recording.num_channels, "sampling_frequency": recording.sampling_frequency,
            "duration_s": recording.duration_s, "preprocess": recording.metadata.get("preprocess", []),
        }
        with run.stage("read labels"):
            labels = load_labels(Path(str(labels_path)).expanduser(), duration_s=recording.duration_s,
                                 sorter_seconds=sorter_seconds)
            check_labels_fit(labels, recording)
        run.results["labels"] = {
            **labels.source, "num_units": labels.sorting.num_units, "num_spikes": labels.sorting.num_spikes,
            "has_labels": labels.has_labels, "sorter_seconds": labels.sorter_seconds,
        }

        pick = pick_backbone(recording.channel_positions, model, sampling_frequency=recording.sampling_frequency,
                             spatial_only=True) if init == "transfer" and not checkpoint else None
        if pick is not None:  # a built backbone (esort-backbones build) of this probe: no pretraining
            checkpoint, run.results["backbone"] = pick.checkpoint, pick.to_dict()
            print(f"[sort_real] {pick.message}")
        elif init == "transfer" and not checkpoint:
            pretrain = run.pipeline_config(windows="pretrain.windows", train="pretrain.train")
            checkpoint, run.results["pretrain"] = pretrained_checkpoint(run, recording, preprocess, pretrain, seed)
        with run.stage("fine-tune + sort"):
            result = esort_from_labels(
                recording, labels, train_seconds=float(train_seconds), init=init,
                checkpoint=str(checkpoint) if checkpoint else None, freeze=transfer.freeze,
                model=model, windows=windows, train=train, quality=quality, evaluation=evaluation,
                infer=infer, postprocess=postprocess, seed=seed, train_dir=run.dir / "train",
            )
        for name, value in result.seconds.items():
            run.seconds[name] = value
        with run.stage("write outputs"):
            outputs = write_outputs(result, run.dir, phy=phy, overwrite=True, seed=seed)

        agreement = result.agreement(evaluation.tolerance_ms)
        timing = result.timing()
        history = result.fitted.train_result.history
        run.results.update(
            train_seconds=float(train_seconds),
            train_end=result.train_end,
            rest_span=list(result.rest_span),
            init=init,
            checkpoint=str(checkpoint) if checkpoint else None,
            transfer_report=result.fitted.transfer_report.to_dict(),
            units=result.selection.report(),
            training={
                "epochs": result.fitted.train_result.epochs_completed,
                "train_windows": len(result.fitted.windows.train),
                "validation_windows": len(result.fitted.windows.validation),
                "final": {k: v for k, v in (history[-1] if history else {}).items() if isinstance(v, (int, float))},
            },
            threshold=result.threshold,
            threshold_curve=result.threshold_curve,
            num_spikes=result.sorting.num_spikes,
            agreement=scores(agreement),
            timing=timing,
            outputs=outputs,
        )
        named_scores = [("agreement with labels", run.results["agreement"])]

        truth = load_labels(Path(str(truth_path)).expanduser()).sorting if truth_path else own_truth
        if truth is not None:
            run.results["ground_truth"] = {
                "path": str(truth_path) if truth_path else "the recording's own",
                **truth_scores(result, truth, evaluation.tolerance_ms),
            }
            named_scores += [("E-Sort vs ground truth", run.results["ground_truth"]["esort"]),
                             ("labeller (kept units)", run.results["ground_truth"]["labeller_kept_units"]),
                             ("labeller (all units)", run.results["ground_truth"]["labeller_all_units"])]
        table = scores_table(named_scores)
        run.results["table"] = table
        flat = {f"agreement/{k}": v for k, v in run.results["agreement"].items() if isinstance(v, (int, float))}
        flat.update({f"timing/{k}": v for k, v in timing.items() if isinstance(v, (int, float))})
        run.logger.log(flat)

        name = labels.source.get("sorter_name") or "the labelling sorter"
        kept = run.results["units"]
        print()
        print(f"E-Sort trained on {name}'s labels of the first {float(train_seconds):g} s "
              f"({kept['num_kept']} of {kept['num_units']} units kept: labels {kept['labels_kept']}), "
              f"scored on the rest ({timing['rest_duration_s']:.1f} s), tolerance {evaluation.tolerance_ms} ms")
        print(table)
        print(f"E-Sort sorted the rest in {timing['sort_rest_seconds']:.2f} s "
              f"({timing['sort_rest_realtime_factor']:.1f}x real time); fine-tuning took {timing['fit_seconds']:.1f} s")
        if timing["speed_ratio"] is not None:
            print(f"{name} took {timing['sorter_seconds']:.1f} s for {timing['sorter_duration_s']:.1f} s of data: "
                  f"E-Sort sorts {timing['speed_ratio']:.1f}x faster per second of data "
                  f"({timing['speed_ratio_with_training']:.1f}x counting fine-tuning and the threshold sweep)")
        print(f"outputs: {', '.join(f'{k} {v}' for k, v in outputs.items())}")
    return run.results


if __name__ == "__main__":
    prepare_process()
    main()
