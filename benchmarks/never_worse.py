"""Is E-Sort never worse than its labeller? Each candidate cause measured on its own (issue 17,
item 0; the tables of docs/claims.md).

    python benchmarks/never_worse.py --work never_worse_work --out nw.jsonl             # the measurement
    python benchmarks/never_worse.py --seeds 0 --kinds drifting --arms before fixed --out quick.jsonl
    python benchmarks/never_worse.py --generator esort --channels 64 --arms fixed motion --out nw.jsonl
    python benchmarks/never_worse.py --table nw.jsonl                           # tables only

Recordings: SpikeInterface's `generate_drifting_recording` (one sorting, a static and a drifting
recording), 48 units on 96 channels of a Neuropixels-1.0-like layout (4 staggered columns, 20 µm
rows), 40 s at 32 kHz; drift: rigid zigzag 30 µm peak to peak with a 40 s period from t = 0, so
the training span (first 20 s) sees 0..+15 µm and the scored span (last 20 s) 0..-15 µm: the
drift the network must handle is never in its labels. `--generator esort`: the same on this
project's synthesiser (`make_esort_recordings`: the np1 preset's `--channels`, the same drift; results under `<work>/esort_generator`, rows marked `generator`). Labeller: Tridesclous2 (with motion
correction on the drifting recording) on the first 20 s; its run on the whole recording is the
reference scored on the same last 20 s. E-Sort (`esort_from_labels`, preprocessing as sort_real's
default, transfer from a backbone pretrained on a source synthesised on the same geometry) in arms
that each change one thing; every arm but the converged ones trains 10 epochs (`ten_epochs_training`, the
real-data default until early stopping became it), so rows measured before and after compare:

  before      the workflow as it was: negatives ignore the quality filter's dropped units, 10 epochs
  fixed       negatives avoid every labelled spike (clear_dropped_units, today's default)
  converged   fixed, trained to convergence (early stopping on the validation loss, patience 300 steps,
              at most --converged-max-steps, default 3000: set it above the 10 epochs' steps at 384 channels;
              0: at most the 10 epochs, which is the real-data default training CPU_TRAIN)
  truth       fixed, trained on the ground truth of the first span (no labeller errors: a bound)
  motion      fixed, on the recording motion-corrected by SpikeInterface (static too: what correction costs where nothing drifts)
  truth_motion  motion, trained on the ground truth of the first span (labeller errors on corrected traces: a bound)
  collisions  fixed, with collision augmentation in training (esort_jax.augment: 30 % of the windows get a
              neighbouring unit's spike within ±30 samples; the settings chosen beforehand, not on these spans)
  motion_collisions  motion, with the same collision augmentation
  motion_converged   motion, trained as `converged` (does stopping at the validation loss's minimum
              generalise better past the training span? docs/claims.md, section 0); with
              --converged-max-steps 0 it is what sort_real and the sorter do by default
  motion_decay  motion, AdamW with weight decay 1e-2 (PyTorch's AdamW default; fixed before any run)

Every arm is scored against the ground truth on the last 20 s (units paired by agreement, 0.4 ms)
with SpikeForest's SNR summary, and `oracle_threshold` says what a threshold tuned on that span
would add (a diagnosis, never a result). `label_flags` marks each unit as oversplit by the
labeller, paired with a dropped unit, or missed, so losses can be attributed per unit. Two rows
per recording score the FIRST span: `teacher` (the labeller's run on the first 20 s: the labels
E-Sort learns) and `labeller_training_span` (its whole-recording run), so the gap to the labeller
splits into what twice the data gave the labeller and what E-Sort lost against its teacher
(`span_table`, printed with --table). Each E-Sort row also holds its scores on the training
span (`training_span`: E-Sort against its teacher on the same span, in-sample), and every row
`misses`: how the spikes of the units the whole-recording labeller sorts well are missed
(crowded, to a neighbouring unit, undetected; `diagnose.spike_misses`, `miss_table`).
Each E-Sort row also records the validation sweep that chose its threshold (`threshold_curve`,
against the teacher's labels) and the per-epoch training metrics (`history`), and `--duplicates`
adds a row `<arm>+dedup`: the same network with neighbouring units' duplicate detections dropped
(`diagnose.without_duplicates`; no training).
`--keep-sortings` writes each arm's sorting to `<work>/.../<kind>/esort_<arm>`;
`--misses-from-kept` prints the miss table from those without training again.
`--train-seconds 30` labels the first 30 s instead of 20 (scored: the last 10 s; rows record
`train_s`): whether a longer labelled span closes the gap (static recordings: the drift's design
assumes 20 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ARMS = ("before", "fixed", "converged", "truth", "motion", "truth_motion", "collisions", "motion_collisions",
        "motion_converged", "motion_decay")
CONVERGED_ARMS = ("converged", "motion_converged")  # early stopping, at most --converged-max-steps
WEIGHT_DECAY = 1e-2  # the motion_decay arm's AdamW decay (PyTorch's default), fixed before any run
# The collision arms' augmentation, fixed before any of them ran (never tuned on a scored span).
COLLISIONS = {"collision_probability": 0.3, "collision_max_shift": 30, "collision_neighbours": 8,
              "collision_scale_jitter": 0.2}
DEDUP = "+dedup"  # an arm's row with neighbouring units' duplicate detections dropped (--duplicates)
CONVERGED_MAX_STEPS = 3000  # the converged arm's default step cap (rows made before it was an option used it)
TRAIN_S, DURATION_S, FS = 20.0, 40.0, 32000.0
TRAINING_SPAN = ", training span"  # an arm's score on the span it was trained on, in the span table


def np1_probe(num_channels: int):
    """A Neuropixels-1.0-like block: 4 columns 16 µm apart, 40 µm pitch, staggered by 20 µm."""
    from spikeinterface.core.generate import generate_multi_columns_probe

    probe = generate_multi_columns_probe(num_columns=4, num_contact_per_column=num_channels // 4, xpitch=16,
                                         ypitch=40, y_shift_per_column=[0, 20, 0, 20], contact_shapes="square",
                                         contact_shape_params={"width": 12})
    probe.set_device_channel_indices(np.arange(probe.get_contact_count()))
    return probe


def make_recordings(seed: int, args, folder: Path) -> tuple[dict, object, dict]:
    """({'static', 'drifting': saved SpikeInterface recordings}, truth sorting, drift facts),
    from SpikeInterface's generator or (--generator esort) this project's."""
    from spikeinterface.core import load

    from esort_jax.io.spikeinterface import SAVE_JOB_KWARGS

    if (folder / "truth").exists():
        return ({k: load(folder / k) for k in ("static", "drifting")}, load(folder / "truth"),
                json.loads((folder / "drift.json").read_text()))
    if args.generator == "esort":
        return make_esort_recordings(seed, args, folder)
    from spikeinterface.generation import generate_drifting_recording
    static, drifting, sorting, extra = generate_drifting_recording(
        num_units=args.units, duration=DURATION_S, sampling_frequency=FS, probe=np1_probe(args.channels),
        generate_displacement_vector_kwargs=dict(
            displacement_sampling_frequency=5.0, drift_start_um=[0, 15], drift_stop_um=[0, -15], drift_step_um=1,
            motion_list=[dict(drift_mode="zigzag", amplitude_factor=1.0, non_rigid_gradient=None,
                              t_start_drift=0.0, t_end_drift=None, period_s=40.0)]),
        extra_outputs=True, seed=seed)
    disp = np.asarray(extra["displacement_vectors"])[:, 1, 0]
    cut = int(TRAIN_S * extra["displacement_sampling_frequency"])
    drift = {"train_um": [float(disp[:cut].min()), float(disp[:cut].max())],
             "rest_um": [float(disp[cut:].min()), float(disp[cut:].max())]}
    saved = {k: r.save(folder=folder / k, overwrite=True, **SAVE_JOB_KWARGS)
             for k, r in (("static", static), ("drifting", drifting))}
    truth = sorting.save(folder=folder / "truth", overwrite=True)
    (folder / "drift.json").write_text(json.dumps(drift))
    return saved, truth, drift


def make_esort_recordings(seed: int, args, folder: Path) -> tuple[dict, object, dict]:
    """The same experiment on this project's synthesiser (data_gen, the np1 preset: `--channels`
    of Neuropixels 1.0 from site 160, or all 384; its own unit density and firing, not --units),
    40 s, static and with the SpikeInterface run's drift: rigid, a 40 s triangle 30 µm peak to
    peak from 0 (slow mode at 90 µm/min), so the training span sees 0..±15 µm and the scored span
    0..∓15 µm (never in the labels). The two recordings have the same units and spike trains
    (the same seed; drift only moves the templates)."""
    from data_gen import SynthesisConfig, write_synthetic
    from data_gen.config import DriftConfig, ProbeConfig
    from esort_jax.io import read_recording_folder, to_spikeinterface_recording, to_spikeinterface_sorting
    from esort_jax.io.spikeinterface import SAVE_JOB_KWARGS

    probe = ProbeConfig(n_channels=args.channels, first_channel=160) if args.channels < 384 else ProbeConfig()
    static = SynthesisConfig(duration_s=DURATION_S, seed=seed, probe=probe, sampling_frequency=FS)
    drifts = {"static": DriftConfig(),
              "drifting": DriftConfig(mode="slow", slow_velocity_um_per_min=90.0, slow_amplitude_um=30.0)}
    saved, truths = {}, {}
    for kind, drift in drifts.items():
        synth = write_synthetic(dataclasses.replace(static, drift=drift), folder / f"{kind}_esort", progress=False)
        recording, truths[kind] = read_recording_folder(synth)
        saved[kind] = to_spikeinterface_recording(recording).save(folder=folder / kind, overwrite=True,
                                                                   **SAVE_JOB_KWARGS)
    if not (np.array_equal(truths["static"].samples, truths["drifting"].samples)
            and np.array_equal(truths["static"].unit_indices, truths["drifting"].unit_indices)):
        raise RuntimeError("data_gen gave different spike trains with and without drift; the pair is not comparable")
    truth = to_spikeinterface_sorting(truths["static"]).save(folder=folder / "truth", overwrite=True)
    drift = truths["drifting"].drift
    disp, cut = drift.displacement_um[:, 0], np.searchsorted(drift.samples, int(TRAIN_S * FS))
    drift_facts = {"train_um": [float(disp[:cut].min()), float(disp[:cut].max())],
                   "rest_um": [float(disp[cut:].min()), float(disp[cut:].max())], "generator": "esort"}
    (folder / "drift.json").write_text(json.dumps(drift_facts))
    return saved, truth, drift_facts


def run_labeller(si_recording, kind: str, stop_s: float | None, folder: Path) -> tuple[object, float]:
    """Tridesclous2 (motion correction on drifting data) on [0, stop_s): (our Sorting, seconds)."""
    from esort_jax.io import read_sorting_npz, write_sorting_npz
    from esort_jax.io.spikeinterface import from_spikeinterface_recording
    from esort_jax.realdata.baselines import run_baseline

    cached = folder / "sorting.npz"
    if cached.exists():
        return read_sorting_npz(cached), json.loads((folder / "seconds.json").read_text())["seconds"]
    recording = from_spikeinterface_recording(si_recording)
    stop = recording.num_samples if stop_s is None else int(stop_s * FS)
    result = run_baseline("tridesclous2", recording, folder, span=(0, stop), n_jobs=2,
                          params={"apply_motion_correction": kind == "drifting"})
    write_sorting_npz(cached, result.sorting)
    (folder / "seconds.json").write_text(json.dumps({"seconds": result.wall_seconds}))
    return result.sorting, result.wall_seconds


def backbone(si_recording, cache_dir: Path) -> Path:
    """A network pretrained (8 epochs, cached) on a data_gen source synthesised on the recording's
    geometry (30 s, 15 000 neurons/mm³, seed 1000), preprocessed as E-Sort's input is."""
    return backbone_and_hit(si_recording, cache_dir)[0]


def backbone_and_hit(si_recording, cache_dir: Path) -> tuple[Path, bool]:
    """`backbone` and whether it was read from the cache (True) or built now."""
    from data_gen import SynthesisConfig
    from data_gen.config import UnitsConfig
    from esort_jax.config import to_dict
    from esort_jax.io import read_recording_folder
    from esort_jax.pipeline import PipelineConfig
    from esort_jax.realdata.preprocess import PreprocessConfig, as_recording
    from esort_jax.runtime.artifacts import pretrained_checkpoint, synthesis_key, synthesised_recording
    from esort_jax.train import TrainConfig
    from esort_jax.windows import WindowConfig

    data = SynthesisConfig(duration_s=30.0, seed=1000, units=UnitsConfig(density_per_mm3=15000.0)).on_geometry(
        si_recording.get_channel_locations(), FS)
    folder, _ = synthesised_recording(data, cache_dir)
    source, truth = read_recording_folder(folder)
    config = PipelineConfig(windows=WindowConfig(train_fraction=1.0), train=TrainConfig(epochs=8, progress=False))
    key = {**synthesis_key(data), "preprocess": to_dict(PreprocessConfig())}
    checkpoint, hit, _ = pretrained_checkpoint(as_recording(source, PreprocessConfig()), truth, config, seed=0,
                                               cache_dir=cache_dir, data_key=key)
    return checkpoint, bool(hit)


def ten_epochs_training():
    """The real-data default training without its early stopping: all 10 epochs, as CPU_TRAIN was
    up to commit f224a03. Every arm but the converged ones keeps it, so rows measured before and
    after that change compare."""
    from esort_jax.realdata.workflow import CPU_TRAIN

    return dataclasses.replace(CPU_TRAIN, early_stopping_patience_steps=0)


def arm_options(arm: str, si_recording, truth, labels, seed: int, max_steps: int = CONVERGED_MAX_STEPS) -> tuple[object, object, dict]:
    """(recording, labels, esort_from_labels options) of an arm (module doc)."""
    from esort_jax.realdata.preprocess import PreprocessConfig, preprocess

    ten_epochs = ten_epochs_training()
    options = {"train": ten_epochs, "clear_dropped_units": arm != "before", "seed": seed,
               "preprocess": PreprocessConfig()}
    if arm in CONVERGED_ARMS:  # CPU_TRAIN's early stopping (patience 300 steps) with a step cap; 0: none
        from esort_jax.realdata.workflow import CPU_TRAIN

        options["train"] = dataclasses.replace(CPU_TRAIN, max_steps=max_steps or None)
    if arm == "motion_decay":
        options["train"] = dataclasses.replace(ten_epochs, optimizer="adamw", weight_decay=WEIGHT_DECAY)
    if arm in ("truth", "truth_motion"):
        labels = truth
    if arm in ("collisions", "motion_collisions"):
        options["train"] = dataclasses.replace(ten_epochs, **COLLISIONS)
    if arm in ("motion", "truth_motion", "motion_collisions", "motion_converged", "motion_decay"):
        from esort_jax.realdata.motion import MotionConfig, correct_motion

        # the library's correction, as sort_real and the sorter run it (seeded since 21cf8ad; rows
        # before called SpikeInterface's correct_motion directly, the same preset, unseeded)
        si_recording, _ = correct_motion(preprocess(si_recording, PreprocessConfig()),
                                         MotionConfig(enabled=True, preset="dredge_fast", n_jobs=2))
        options["preprocess"] = None
    return si_recording, labels, options


def esort_arm(arm: str, si_recording, truth, labels, checkpoint: Path, seed: int, max_steps: int = CONVERGED_MAX_STEPS,
              keep: Path | None = None, reference: dict | None = None, duplicates: bool = False) -> dict:
    """One E-Sort arm trained on `labels` of the first 20 s, scored on the rest (module doc), and
    on the training span it learned from (`training_span`: the same span as the `teacher` row, so
    E-Sort against its labels is paired there; in-sample, not a result). `keep`: also write the
    arm's sorting there (a SpikeInterface sorting folder) for per-spike diagnostics. `reference`
    (`miss_reference`): also how the arm misses the spikes of the units the labeller sorts well
    (`misses`, per span). `duplicates`: also the same network with neighbouring units' duplicate
    detections dropped (`diagnose.without_duplicates`, radius and threshold chosen on the
    validation tail of the training span), returned as `unduplicated` (the arm's row + DEDUP)."""
    from esort_jax import pipeline
    from esort_jax.evaluate import evaluate
    from esort_jax.realdata.diagnose import oracle_threshold
    from esort_jax.realdata.workflow import esort_from_labels

    recording, labels, options = arm_options(arm, si_recording, truth, labels, seed, max_steps)
    started = time.perf_counter()
    result = esort_from_labels(recording, labels, train_seconds=TRAIN_S, checkpoint=checkpoint, **options)
    wall = time.perf_counter() - started
    rest = result.rest_span
    scores = evaluate(result.sorting, truth, identities="unknown", span=rest)
    training_span = evaluate(result.sorting, truth, identities="unknown", span=(0, result.train_end))
    misses = {name: miss_report(result.sorting, truth, name, reference) for name in ("rest", "training_span")} \
        if reference else None
    if keep is not None:
        from esort_jax.io.phy import write_sorting_folder

        write_sorting_folder(result.sorting, keep, overwrite=True)
    low = pipeline.sort(result.fitted, result.recording, result.config, threshold=min(result.config.evaluation.thresholds),
                        span=(result.train_end, result.recording.num_samples))
    oracle = oracle_threshold(low.sorting, low.scores, truth, rest, result.config.evaluation.thresholds)
    accounting = pipeline.label_accounting(result.fitted, result.threshold_curve, result.config)
    unduplicated = None
    if duplicates:  # the same network, neighbouring units' duplicates dropped (a row of its own)
        from esort_jax.realdata.diagnose import without_duplicates

        single = without_duplicates(result, seed=seed)
        if keep is not None:
            write_sorting_folder(single.sorting, keep.with_name(keep.name + DEDUP), overwrite=True)
        unduplicated = {
            "scores": evaluate(single.sorting, truth, identities="unknown", span=rest),
            "training_span": evaluate(single.sorting, truth, identities="unknown", span=(0, single.train_end)),
            "misses": {name: miss_report(single.sorting, truth, name, reference) for name in ("rest", "training_span")}
            if reference else None,
            "threshold": single.threshold, "duplicates": single.threshold_curve["duplicates"],
            "seconds": {"duplicates": single.seconds["duplicates"]}}
    history = [{k: v for k, v in epoch.items() if isinstance(v, (int, float))} for epoch in result.fitted.train_result.history]
    return {"scores": scores, "training_span": training_span, "misses": misses, "threshold": result.threshold,
            "threshold_curve": result.threshold_curve, "oracle": oracle, "seconds": {**result.seconds, "wall": wall},
            "units_kept": result.selection.report()["num_kept"], "units_labelled": len(result.selection.rows),
            "training": result.fitted.summary(), "history": history, "unduplicated": unduplicated,
            **{k: v for k, v in accounting.items() if k != "label_accounting"}}


WELL_SORTED = 0.9  # units the whole-recording labeller sorts at least this well: the spikes `misses` follows


def miss_reference(whole, truth, locations: np.ndarray, spans: dict) -> dict:
    """What `miss_report` needs: per span name, the truth units the labeller's whole-recording
    run sorts with accuracy >= WELL_SORTED there, and the units' locations."""
    from esort_jax.evaluate import evaluate

    units = {}
    for name, span in spans.items():
        accuracy = np.asarray([np.nan if a is None else a for a in
                               evaluate(whole, truth, identities="unknown", span=span).per_unit()["accuracy"]], float)
        units[name] = np.flatnonzero(np.nan_to_num(accuracy) >= WELL_SORTED)
    return {"units": units, "spans": dict(spans), "locations": locations}


def miss_report(sorting, truth, span: str, reference: dict) -> dict:
    """`diagnose.spike_misses` of `sorting` on the span named `span` ('rest' or 'training_span')
    for the units the labeller sorts well there."""
    from esort_jax.realdata.diagnose import spike_misses

    return spike_misses(sorting, truth, reference["spans"][span], reference["locations"],
                        units=reference["units"][span])


def scored(result, truth, snr) -> dict:
    """The JSON row's scores: summary, SpikeForest's SNR summary, per-unit accuracy."""
    from esort_jax.report.snr import snr_summary

    per_unit = result.per_unit()
    keys = ("accuracy_pooled", "accuracy_mean", "accuracy_median", "precision_pooled", "recall_pooled",
            "well_detected", "n_units")
    return {**{k: result.to_dict()[k] for k in keys}, **snr_summary(per_unit, snr, truth.unit_ids),
            "per_unit_accuracy": per_unit["accuracy"]}


def recording_context(si_recording, truth, kind: str, folder: Path) -> tuple:
    """(truth as our Sorting, SNR, `miss_reference`, the labeller's first-span sorting and its
    seconds, its whole-recording sorting and seconds) of one recording; the labeller runs are
    cached in `folder`."""
    from esort_jax.io.spikeinterface import from_spikeinterface_sorting
    from esort_jax.realdata.preprocess import PreprocessConfig, preprocessed_recording
    from esort_jax.recording import ArrayTraces
    from esort_jax.report.snr import unit_snr

    truth = from_spikeinterface_sorting(truth)
    train_end = int(TRAIN_S * FS)
    rest = (train_end, si_recording.get_num_samples() - 60 + 1 + 29)
    lazy = preprocessed_recording(si_recording, PreprocessConfig())
    # in memory (40 s: 61 MB at 384 channels): filtered once, then read for the SNR and the unit
    # places (unit_snr on the lazy recording filters each chunk it reads: 49 s at 384 channels)
    preprocessed = dataclasses.replace(lazy, traces=ArrayTraces(lazy.read(0, lazy.num_samples)))
    snr, channels = unit_snr(preprocessed, truth, with_channels=True)
    locations = np.where(channels[:, None] >= 0, np.asarray(preprocessed.channel_positions)[channels], np.nan)
    first, first_s = run_labeller(si_recording, kind, TRAIN_S, folder / "labeller_first")
    whole, whole_s = run_labeller(si_recording, kind, None, folder / "labeller_whole")
    reference = miss_reference(whole, truth, locations, {"rest": rest, "training_span": (0, train_end)})
    return truth, snr, reference, first, first_s, whole, whole_s


def kept_misses(seed: int, kind: str, si_recording, truth, arms, work: Path) -> list[tuple[str, str, dict]]:
    """(method, span, misses) of the labeller (whole recording), the teacher and each arm in
    `arms` whose sorting a run with --keep-sortings left in `work`: no training."""
    from esort_jax.realdata.labeller import load_labels

    folder = work / f"seed{seed}" / kind
    truth, _, reference, first, _, whole, _ = recording_context(si_recording, truth, kind, folder)
    out = [("labeller (whole)", span, miss_report(whole, truth, span, reference)) for span in ("rest", "training_span")]
    out.append(("teacher", "training_span", miss_report(first, truth, "training_span", reference)))
    for arm in arms:
        if (folder / f"esort_{arm}").exists():
            sorting = load_labels(folder / f"esort_{arm}").sorting
            out += [(arm, span, miss_report(sorting, truth, span, reference)) for span in ("rest", "training_span")]
    return out


def miss_table(entries: list[tuple[str, str, dict]]) -> str:
    """Markdown: per (method, span), how the spikes of the units the whole-recording labeller
    sorts well (accuracy >= WELL_SORTED) are missed, counts pooled over the entries given
    (`diagnose.spike_misses`)."""
    pooled: dict = {}
    for method, span, m in entries:
        cell = pooled.setdefault((method, span), dict.fromkeys(("n", "units", "spikes", "missed", "crowded",
                                                                "missed_crowded", "to_neighbour", "undetected",
                                                                "unit_lost"), 0))
        cell["n"] += 1
        for key in cell:
            if key != "n":
                cell[key] += m[key]

    def pct(a, b):
        return f"{100 * a / b:.2f}%" if b else "-"

    lines = ["| method | span | recordings | units | spikes | missed | missed, crowded spikes | missed, isolated spikes | "
             "crowded share | missed to a neighbouring unit | missed, undetected | spikes of units lost |",
             "|" + "---|" * 12]
    for (method, span), c in pooled.items():
        lines.append(f"| {method} | {span.replace('_', ' ')} | {c['n']} | {c['units']} | {c['spikes']} | "
                     f"{pct(c['missed'], c['spikes'])} | {pct(c['missed_crowded'], c['crowded'])} | "
                     f"{pct(c['missed'] - c['missed_crowded'], c['spikes'] - c['crowded'])} | "
                     f"{pct(c['crowded'], c['spikes'])} | {pct(c['to_neighbour'], c['spikes'])} | "
                     f"{pct(c['undetected'], c['spikes'])} | {c['unit_lost']} |")
    return "\n".join(lines)


def row_misses(rows: list[dict], kind: str) -> list[tuple[str, str, dict]]:
    """`miss_table` entries from the JSONL rows of one kind that hold `misses`."""
    names = {"labeller": "labeller (whole)"}
    return [(names.get(r["arm"], arm_label(r)), span, m) for r in rows if r["kind"] == kind and r.get("misses")
            and r["arm"] != "labeller_training_span" for span, m in r["misses"].items()]


def recording_rows(seed: int, kind: str, si_recording, truth, args, work: Path, done: set):
    """Yields the labeller's row and every arm's for one recording (skipping those in `done`)."""
    from esort_jax.evaluate import evaluate
    from esort_jax.realdata.diagnose import label_flags
    from esort_jax.realdata.labeller import load_labels
    from esort_jax.realdata.quality import QualityFilter, select_units

    folder = work / f"seed{seed}" / kind
    truth, snr, reference, first, first_s, whole, whole_s = recording_context(si_recording, truth, kind, folder)
    train_end, rest = reference["spans"]["training_span"][1], reference["spans"]["rest"]
    kept = select_units(load_labels(first), (0, train_end), QualityFilter()).kept
    base = {"seed": seed, "kind": kind, **({"train_s": TRAIN_S} if TRAIN_S != 20.0 else {})}
    if (seed, kind, "labeller", None) not in done:
        yield {**base, "arm": "labeller", **scored(evaluate(whole, truth, identities="unknown", span=rest), truth, snr),
               "seconds": {"labeller_first": first_s, "labeller_whole": whole_s},
               "units_labelled": int(first.num_units), "units_kept": int(kept.sum()),
               "flags": label_flags(first, kept, truth, (0, train_end)), "snr": snr.tolist(),
               "misses": {name: miss_report(whole, truth, name, reference) for name in ("rest", "training_span")}}
    for arm, sorting in (("teacher", first), ("labeller_training_span", whole)):  # the first span's scores
        if (seed, kind, arm, None) not in done:
            yield {**base, "arm": arm, "span": "training",
                   **scored(evaluate(sorting, truth, identities="unknown", span=(0, train_end)), truth, snr),
                   **({"misses": {"training_span": miss_report(first, truth, "training_span", reference)}}
                      if arm == "teacher" else {})}  # the whole run's are in the labeller's row
    checkpoint = None
    for arm in args.arms:
        budget = args.converged_max_steps if arm in CONVERGED_ARMS else None
        if (seed, kind, arm, budget) in done:
            continue
        checkpoint = checkpoint or backbone(si_recording, Path(args.cache))  # only when an arm runs
        keep = folder / f"esort_{arm}" if args.keep_sortings else None
        out = esort_arm(arm, si_recording, truth, first, checkpoint, seed, args.converged_max_steps, keep, reference,
                        duplicates=args.duplicates)
        single = out.pop("unduplicated")
        row = {**base, "arm": arm, "max_steps": budget, **scored(out.pop("scores"), truth, snr),
               "training_span": scored(out.pop("training_span"), truth, snr), **out}
        print(f"[never_worse] seed {seed} {kind} {arm}: accuracy_mean {row['accuracy_mean']:.3f}", flush=True)
        yield row
        if single is not None:  # same network, same training: only the post-processing differs
            pairs = {k: row[k] for k in ("units_kept", "units_labelled", "training", "train_steps", "labels_used_spikes",
                                         "labelled_seconds") if k in row}
            derived = {**base, "arm": arm + DEDUP, "max_steps": budget, **scored(single.pop("scores"), truth, snr),
                       "training_span": scored(single.pop("training_span"), truth, snr), **pairs, **single}
            print(f"[never_worse] seed {seed} {kind} {arm + DEDUP}: accuracy_mean {derived['accuracy_mean']:.3f}",
                  flush=True)
            yield derived


def _mean_std(values) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "-"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


def arm_label(row: dict) -> str:
    """The arm's name in the tables; a converged arm with its step cap (rows before the cap was
    an option ran with 3000)."""
    base = row["arm"].removesuffix(DEDUP)
    if base not in CONVERGED_ARMS:
        return row["arm"]
    cap = step_cap(row)
    budget = "≤ 10 epochs: the default" if cap == 0 else f"≤ {cap} steps"
    return f"{base} ({budget}){row['arm'][len(base):]}"


def step_cap(row: dict) -> int | None:
    """A row's step cap: None for arms without one, a converged arm's `max_steps` (0: the 10
    epochs alone), 3000 for converged rows made before the cap was recorded."""
    if row["arm"].removesuffix(DEDUP) not in CONVERGED_ARMS:
        return None
    return CONVERGED_MAX_STEPS if row.get("max_steps") is None else row["max_steps"]


def _labels(rows: list[dict], arms) -> list[str]:
    """The table's methods in `arms` order (each followed by its +dedup rows), one per converged
    step cap."""
    return [label for arm in arms for name in (arm, arm + DEDUP)
            for label in sorted({arm_label(r) for r in rows if r["arm"] == name})]


def summary_table(rows: list[dict], kind: str) -> str:
    """Markdown: per method, mean ± std over seeds of the scores, and the paired difference in
    per-unit mean accuracy from the labeller (same seed)."""
    mine = [r for r in rows if r["kind"] == kind]
    labeller = {r["seed"]: r for r in mine if r["arm"] == "labeller"}
    head = ("| method | seeds | acc. mean per unit | − labeller (paired) | acc. pooled | well detected | "
            "acc. mean, SNR ≥ 8 | oracle threshold acc. mean | units kept / labelled |")
    lines = [head, "|" + "---|" * 9]
    for arm in _labels(mine, ("labeller", *ARMS)):
        cells = [r for r in mine if arm_label(r) == arm]
        diff = [r["accuracy_mean"] - labeller[r["seed"]]["accuracy_mean"] for r in cells if r["seed"] in labeller]
        oracle = [r["oracle"]["accuracy_mean"] for r in cells if "oracle" in r]
        units = "-" if arm == "labeller" else f"{np.mean([r['units_kept'] for r in cells]):.0f} / " \
                                              f"{np.mean([r['units_labelled'] for r in cells]):.0f}"
        lines.append(f"| {arm} | {len(cells)} | {_mean_std([r['accuracy_mean'] for r in cells])} | "
                     f"{'-' if arm == 'labeller' else _mean_std(diff)} | {_mean_std([r['accuracy_pooled'] for r in cells])} | "
                     f"{_mean_std([r['well_detected'] for r in cells])} | "
                     f"{_mean_std([r['accuracy_mean_snr_above'] for r in cells])} | {_mean_std(oracle)} | {units} |")
    return "\n".join(lines)


def span_table(rows: list[dict], kind: str,
               arms=("fixed", "converged", "motion", "motion_converged", "truth_motion")) -> str:
    """Markdown: where E-Sort's gap to the labeller comes from, mean ± std over seeds. The labeller
    run on the whole recording clusters twice the data E-Sort's teacher (the labeller on the
    training span only) had; both are scored on the training span (`labeller_training_span`,
    `teacher` rows), so `whole − teacher` is what more data gave the labeller there and
    `arm − teacher` what E-Sort lost against the labels it learned (scored on the rest). Arms
    whose rows hold E-Sort's own score on the training span (`training_span`, rows written since
    it was added) get `arm, training span` and `arm − teacher, training span`: E-Sort against its
    teacher on the same span (in-sample: the spikes it was trained on), which separates
    reproducing the labels from carrying them over to the rest."""
    mine = [r for r in rows if r["kind"] == kind]
    by_seed = {}
    for r in mine:
        by_seed.setdefault(r["seed"], {})[arm_label(r)] = r["accuracy_mean"]
        if "training_span" in r:
            by_seed[r["seed"]][arm_label(r) + TRAINING_SPAN] = r["training_span"]["accuracy_mean"]
    seeds = [s for s, d in by_seed.items() if {"labeller", "teacher", "labeller_training_span"} <= d.keys()]
    if not seeds:
        return "(no teacher rows: run the benchmark again on this --out to add them)"
    esort = [a for a in _labels(mine, arms) if any(a in by_seed[s] for s in seeds)]
    esort_train = [a + TRAINING_SPAN for a in esort if any(a + TRAINING_SPAN in by_seed[s] for s in seeds)]
    head = ["labeller (whole), rest", "labeller (whole), training span",
            "teacher (labeller on the training span), training span", *[f"{a}, rest" for a in esort],
            *esort_train, "whole − teacher, training span", *[f"{a} − teacher" for a in esort],
            *[f"{a.removesuffix(TRAINING_SPAN)} − teacher{TRAINING_SPAN}" for a in esort_train]]
    values = [[by_seed[s].get(k) for s in seeds]
              for k in ("labeller", "labeller_training_span", "teacher", *esort, *esort_train)]
    values += [[by_seed[s]["labeller_training_span"] - by_seed[s]["teacher"] for s in seeds]]
    values += [[by_seed[s][a] - by_seed[s]["teacher"] for s in seeds if a in by_seed[s]]
               for a in (*esort, *esort_train)]
    return "\n".join([f"| seeds | {' | '.join(head)} |", "|" + "---|" * (1 + len(head)),
                      f"| {len(seeds)} | " + " | ".join(_mean_std(v) for v in values) + " |"])


AUGMENTED = (("fixed", "collisions"), ("motion", "motion_collisions"))


def augmentation_table(rows: list[dict], kind: str) -> str:
    """Markdown: each arm with and without the collision augmentation, paired by seed (the same
    recording, labels and training seed): per-unit mean accuracy, mean ± std over the seeds that
    have both rows, the paired difference and its per-seed values, and the augmented arm minus
    the labeller. Empty without augmented rows."""
    mine = [r for r in rows if r["kind"] == kind]
    acc = {(r["seed"], r["arm"]): r["accuracy_mean"] for r in mine}
    lines = ["| arms | seeds | without | with | with − without (paired) | per seed | with − labeller |",
             "|" + "---|" * 7]
    for plain, augmented in AUGMENTED:
        seeds = sorted(s for s, a in acc if a == augmented and (s, plain) in acc)
        if not seeds:
            continue
        diff = [acc[s, augmented] - acc[s, plain] for s in seeds]
        gap = [acc[s, augmented] - acc[s, "labeller"] for s in seeds if (s, "labeller") in acc]
        lines.append(f"| {plain} → {augmented} | {len(seeds)} | {_mean_std([acc[s, plain] for s in seeds])} | "
                     f"{_mean_std([acc[s, augmented] for s in seeds])} | {_mean_std(diff)} | "
                     f"{', '.join(f'{d:+.3f}' for d in diff)} | {_mean_std(gap)} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def cause_table(rows: list[dict], kind: str, arms=("before", "fixed", "converged", "motion", "motion_converged")) -> str:
    """Markdown: per-unit accuracy of each arm minus the labeller's, pooled over seeds, by what
    the labeller's first-span labels did with the unit (label_flags)."""
    groups = {"oversplit by the labeller": "oversplit", "paired labeller unit dropped": "paired_dropped",
              "missed by the labeller": "missed", "none of these": None}
    ref = {r["seed"]: r for r in rows if r["kind"] == kind and r["arm"] == "labeller"}
    arms = _labels([r for r in rows if r["kind"] == kind], arms)
    lines = ["| units | n | " + " | ".join(f"{a} − labeller" for a in arms) + " |", "|" + "---|" * (2 + len(arms))]
    for name, flag in groups.items():
        cells, count = [], 0
        for arm in arms:
            diffs = []
            for r in (r for r in rows if r["kind"] == kind and arm_label(r) == arm and r["seed"] in ref):
                flags, base = ref[r["seed"]]["flags"], ref[r["seed"]]["per_unit_accuracy"]
                for u, (a, b) in enumerate(zip(r["per_unit_accuracy"], base)):
                    hit = (not any(flags[f][u] for f in ("oversplit", "paired_dropped", "missed"))) if flag is None \
                        else flags[flag][u]
                    if hit and a is not None and b is not None and np.isfinite(a) and np.isfinite(b):
                        diffs.append(a - b)
            count = max(count, len(diffs))
            cells.append(f"{np.mean(diffs):+.3f}" if diffs else "-")
        lines.append(f"| {name} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def set_training_span(seconds: float) -> None:
    """--train-seconds: every function here reads the module's TRAIN_S when it runs."""
    global TRAIN_S
    TRAIN_S = float(seconds)


def done_rows(lines: list[str], generator: str, channels: int, train_s: float = 20.0) -> set:
    """(seed, kind, arm, step cap) of the JSONL rows already measured for this generator, channel
    count and training span (rows without `channels` count for any, rows without `train_s` are
    20 s; the converged arm's cap defaults to the 3000 steps it had before the cap was an
    option): run again, only the rest is measured."""
    rows = (json.loads(line) for line in lines if line.strip())
    return {(r["seed"], r["kind"], r["arm"], step_cap(r))
            for r in rows if r.get("generator", "spikeinterface") == generator and r.get("channels") in (None, channels)
            and r.get("train_s", 20.0) == train_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kinds", nargs="+", default=["static", "drifting"], choices=["static", "drifting"])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--channels", type=int, default=96)
    parser.add_argument("--units", type=int, default=48, help="units of SpikeInterface's generator")
    parser.add_argument("--generator", choices=["spikeinterface", "esort"], default="spikeinterface",
                        help="whose synthetic recordings: SpikeInterface's generate_drifting_recording or "
                             "this project's data_gen (np1, make_esort_recordings)")
    parser.add_argument("--work", default="never_worse_work")
    parser.add_argument("--cache", default="cache")
    parser.add_argument("--out", default="never_worse.jsonl")
    parser.add_argument("--converged-max-steps", type=int, default=CONVERGED_MAX_STEPS,
                        help="the converged arm's step cap (rows record it as max_steps; one row per cap); "
                             "0: at most the 10 epochs, the real-data default training (CPU_TRAIN)")
    parser.add_argument("--keep-sortings", action="store_true",
                        help="write each E-Sort arm's sorting to <work>/.../<kind>/esort_<arm> (SpikeInterface folder)")
    parser.add_argument("--misses-from-kept", action="store_true",
                        help="print how the labeller, the teacher and the --arms a --keep-sortings run left in "
                             "--work miss the spikes of well-sorted units (diagnose.spike_misses); no training")
    parser.add_argument("--train-seconds", type=float, default=TRAIN_S,
                        help="the labelled span (the rest of the 40 s is scored); rows record it as train_s "
                             "when it is not 20 s. Give another --work (the recordings' drift facts and the "
                             "labeller's first-span run depend on it) and another --out (tables do not split by it)")
    parser.add_argument("--duplicates", action="store_true",
                        help="also score each arm's network with neighbouring units' duplicate detections dropped "
                             "(diagnose.without_duplicates; rows '<arm>+dedup', no extra training)")
    parser.add_argument("--table", help="only print the tables of this JSONL file")
    args = parser.parse_args()
    if args.table:
        rows = [json.loads(line) for line in Path(args.table).read_text().splitlines() if line.strip()]
        groups = sorted({(r.get("generator", "spikeinterface"), r.get("channels")) for r in rows}, key=str)
        for generator, channels in groups:
            mine = [r for r in rows if (r.get("generator", "spikeinterface"), r.get("channels")) == (generator, channels)]
            for kind in ("static", "drifting"):
                print(f"\n{generator} generator, {channels or 'unrecorded'} channels, {kind}\n"
                      f"{summary_table(mine, kind)}\n\n{cause_table(mine, kind)}\n\n{span_table(mine, kind)}")
                if row_misses(mine, kind):
                    print(f"\n{miss_table(row_misses(mine, kind))}")
                if augmentation_table(mine, kind):
                    print(f"\n{augmentation_table(mine, kind)}")
        return
    from esort_jax.runtime.host_memory import configure_host_allocator

    configure_host_allocator()
    if not 0 < args.train_seconds < DURATION_S:
        parser.error(f"--train-seconds must lie in (0, {DURATION_S}); got {args.train_seconds}")
    if args.converged_max_steps < 0:
        parser.error(f"--converged-max-steps must be >= 0 (0: at most the 10 epochs); got {args.converged_max_steps}")
    set_training_span(args.train_seconds)
    out = Path(args.out)
    done = done_rows(out.read_text().splitlines() if out.exists() else [], args.generator, args.channels,
                     args.train_seconds)
    work = Path(args.work) / ("esort_generator" if args.generator == "esort" else "")
    for seed in args.seeds:
        recordings, truth, drift = make_recordings(seed, args, work / f"seed{seed}" / "data")
        if args.misses_from_kept:
            for kind in args.kinds:
                print(f"\nseed {seed}, {kind}: spikes of the units the whole-recording labeller sorts well\n"
                      f"{miss_table(kept_misses(seed, kind, recordings[kind], truth, args.arms, work))}", flush=True)
            continue
        for kind in args.kinds:
            for row in recording_rows(seed, kind, recordings[kind], truth, args, work, done):
                row["drift"] = drift if kind == "drifting" else None
                row["generator"], row["channels"] = args.generator, args.channels
                with out.open("a") as handle:
                    handle.write(json.dumps(row, default=float) + "\n")


if __name__ == "__main__":
    main()
