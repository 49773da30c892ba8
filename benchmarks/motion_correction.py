"""E-Sort with and without motion correction on drifting synthetic recordings, and the labeller
on the same span (the table of docs/motion_correction.md).

    python benchmarks/motion_correction.py --out motion.jsonl                 # the full measurement
    python benchmarks/motion_correction.py --duration 60 --drifts slow --presets none rigid_fast \
        --labels truth --out quick.jsonl                                      # a quick look

Recordings: SpikeInterface's `generate_drifting_recording` (one sorting, a static and a drifting
recording; Neuronexus-32 probe, 32 kHz), written to binary folders. Drift modes:
  slow   zigzag from +15 to -15 µm (30 µm range) with a 240 s period, from t = 0
  fast   rigid jumps between +10 and -10 µm (20 µm) every 20-50 s, from t = 0
  static the same units and spikes without drift (reference)
Arms, each `run_sorter("esort", ...)` trained from scratch on the labels of the first `--train-seconds`
and scored against the ground truth on the rest (E-Sort's rest span, units paired by agreement,
0.4 ms tolerance): labels from the ground truth ('truth') or from a labeller run by the sorter on
the training span ('tridesclous2', needs the baselines stack), preprocessing with motion
correction off ('none') or with a preset. The labeller row is the labeller run on the whole
recording, scored on the same span. One JSON line per arm goes to --out (appended as they
finish), then the table is printed. The static recording is sorted with every preset too (does
correction cost accuracy when nothing drifts?).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DRIFTS = {
    "slow": dict(drift_start_um=[0, 15], drift_stop_um=[0, -15],
                 motion=dict(drift_mode="zigzag", t_start_drift=0.0, period_s=240)),
    "fast": dict(drift_start_um=[0, 10], drift_stop_um=[0, -10],
                 motion=dict(drift_mode="bump", t_start_drift=0.0, bump_interval_s=(20.0, 50.0))),
}


def make_recordings(duration: float, seed: int, folder: Path, drifts: list[str]) -> tuple[dict, object]:
    """{'static' and each drift mode: a saved SpikeInterface recording}, the ground truth."""
    from spikeinterface.generation import generate_drifting_recording

    from esort_jax.io.spikeinterface import SAVE_JOB_KWARGS

    recordings, truth = {}, None
    for mode in drifts or ["slow"]:  # the static recording is the same for every drift mode
        spec = DRIFTS[mode]
        static, drifting, sorting = generate_drifting_recording(
            num_units=20, duration=duration, sampling_frequency=32000.0, probe_name="Neuronexus-32", seed=seed,
            generate_displacement_vector_kwargs=dict(
                displacement_sampling_frequency=5.0, drift_start_um=spec["drift_start_um"],
                drift_stop_um=spec["drift_stop_um"], drift_step_um=1,
                motion_list=[dict(non_rigid_gradient=None, t_end_drift=None, **spec["motion"])],
            ),
        )
        if mode in drifts:
            recordings[mode] = drifting.save(folder=folder / mode, overwrite=True, **SAVE_JOB_KWARGS)
        if truth is None:
            recordings["static"] = static.save(folder=folder / "static", overwrite=True, **SAVE_JOB_KWARGS)
            truth = sorting
    return recordings, truth


def esort_arm(recording, truth, labels: str, preset: str, args, folder: Path) -> dict:
    """One run_sorter('esort') arm, scored on the rest of the recording."""
    from spikeinterface.sorters import run_sorter

    import esort_jax.spikeinterface  # noqa: F401  registers 'esort'

    source = dict(labels=truth) if labels == "truth" else dict(labeller=labels)
    motion = {"enabled": preset != "none", "preset": preset if preset != "none" else "rigid_fast", "n_jobs": 2}
    started = time.perf_counter()
    sorting = run_sorter("esort", recording, folder=folder, remove_existing_folder=True, analyzer=False,
                         checkpoint=None,  # from scratch in every arm: only the preprocessing differs
                         train_seconds=args.train_seconds, preprocess={"motion": motion}, n_jobs=2,
                         train={"epochs": args.epochs}, seed=args.seed, **source)
    wall = time.perf_counter() - started
    log = json.loads((folder / "spikeinterface_log.json").read_text())["esort"]
    fs = recording.get_sampling_frequency()
    span = (int(log["esort"]["train_duration_s"] * fs), recording.get_num_samples() - 60 + 1 + 29)
    return {"wall_s": wall, "run_time_s": log["esort"]["seconds"], "labeller": log["labeller"],
            "motion": log["motion"], **score(sorting, truth, span)}


def labeller_arm(recording, truth, name: str, args, folder: Path) -> dict:
    """The labeller on the whole recording, scored on the same span as E-Sort."""
    from esort_jax.io.spikeinterface import to_spikeinterface_sorting
    from esort_jax.realdata.baselines import run_baseline

    result = run_baseline(name, recording, folder, n_jobs=2)
    fs = recording.get_sampling_frequency()
    span = (int(args.train_seconds * fs), recording.get_num_samples() - 60 + 1 + 29)
    return {"wall_s": result.wall_seconds, "run_time_s": result.sorter_seconds,
            **score(to_spikeinterface_sorting(result.sorting), truth, span)}


def score(si_sorting, truth, span: tuple[int, int]) -> dict:
    """Against the ground truth on `span`, units paired by agreement (esort_jax.evaluate)."""
    from esort_jax.evaluate import evaluate
    from esort_jax.io.spikeinterface import from_spikeinterface_sorting

    result = evaluate(from_spikeinterface_sorting(si_sorting), from_spikeinterface_sorting(truth),
                      tolerance_ms=0.4, identities="unknown", span=span)
    summary = result.to_dict()
    keys = ("accuracy_pooled", "precision_pooled", "recall_pooled", "accuracy_mean", "accuracy_median",
            "well_detected")
    return {k: summary[k] for k in keys if k in summary}


def arms(args) -> list[tuple[str, str, str]]:
    """(recording, labels, preset) of every E-Sort arm, then (recording, 'labeller', name)."""
    out = [("static", "truth", preset) for preset in args.presets]  # does correction hurt without drift?
    for drift in args.drifts:
        out += [(drift, labels, preset) for labels in args.labels for preset in args.presets]
        out += [(drift, "labeller", name) for name in args.labels if name != "truth"]
    return out


def table(rows: list[dict]) -> str:
    """Markdown table of the measured arms."""
    head = "| recording | labels | motion correction | accuracy (pooled) | precision | recall | accuracy (mean per unit) | well detected | E-Sort s (whole rec.) | motion s |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        esort_s = r.get("run_time_s", {}).get("total_whole_recording") if isinstance(r.get("run_time_s"), dict) \
            else r.get("run_time_s")
        motion_s = sum((r.get("motion") or {}).get("run_times_s", {}).values()) if r.get("motion") else None
        cells = [r["recording"], r["labels"], r["preset"], r.get("accuracy_pooled"), r.get("precision_pooled"),
                 r.get("recall_pooled"), r.get("accuracy_mean"), r.get("well_detected"), esort_s, motion_s]
        lines.append("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else ("-" if c is None else str(c))
                                        for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--train-seconds", type=float, default=30.0)
    parser.add_argument("--drifts", nargs="*", default=["slow", "fast"], choices=list(DRIFTS))
    parser.add_argument("--presets", nargs="+", default=["none", "rigid_fast", "dredge"])
    parser.add_argument("--labels", nargs="+", default=["truth", "tridesclous2"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("motion_work"))
    parser.add_argument("--out", type=Path, default=Path("motion_correction.jsonl"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    recordings, truth = make_recordings(args.duration, args.seed, args.work / "recordings", args.drifts)
    rows = []
    for recording_name, labels, preset in arms(args):
        folder = args.work / f"{recording_name}_{labels}_{preset}"
        recording = recordings[recording_name]
        if labels == "labeller":  # the labeller alone, its own preprocessing, on the whole recording
            row = {"recording": recording_name, "labels": f"{preset} alone (whole recording)", "preset": "-",
                   **labeller_arm(recording, truth, preset, args, folder)}
        else:
            row = {"recording": recording_name, "labels": labels, "preset": preset,
                   **esort_arm(recording, truth, labels, preset, args, folder)}
        rows.append(row)
        with open(args.out, "a") as handle:
            handle.write(json.dumps(row, default=str) + "\n")
        print(table(rows[-1:]).splitlines()[-1], flush=True)
        shutil.rmtree(folder / "sorter_output" / "train", ignore_errors=True)
    print(table(rows))


if __name__ == "__main__":
    main()
