"""Time from a new recording with labels to its sorting, with and without a built backbone, and
the accuracy of both (docs/spikeinterface.md, "Pretrained backbones").

    esort-backbones build np1 temporal                       # once (the user cache)
    python benchmarks/backbones.py --probe np1 --out backbones.jsonl

Target: data_gen's Neuropixels-like recording on `--probe` ('np1': all 384 sites of bank 0,
which the np1 backbone holds; 'dense': an 8 x 48 6 µm-pitch layout no backbone holds, so only
the temporal layers transfer), 10 000 neurons/mm³, `--duration` s at 30 kHz, a seed unlike the
backbones' sources. Labels: the ground truth of the first `--train-seconds` (standing in for a
labeller's output), K = `--spikes-per-unit` spikes per unit. Arms: `run_sorter("esort", ...)`
with checkpoint=None (scratch) and checkpoint='auto' (the backbone picked by geometry), the same
epochs; time = run_sorter's run_time (fit, threshold choice and the sort of the whole
recording); accuracy on the rest against the ground truth (0.4 ms, known identities).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def target(probe: str, channels: int | None, duration: float, seed: int, folder: Path):
    """(saved SpikeInterface recording, ground-truth SpikeInterface sorting) of the target: all
    sites of `probe`, or its `channels` deepest-first block."""
    from data_gen import SynthesisConfig, write_synthetic
    from data_gen.config import ProbeConfig
    from esort_jax.io.folder import read_recording_folder
    from esort_jax.io.spikeinterface import to_spikeinterface_recording, to_spikeinterface_sorting

    config = SynthesisConfig(duration_s=duration, sampling_frequency=30000.0, seed=seed,
                             probe=ProbeConfig(name=probe, n_channels=channels))
    if not (folder / "metadata.json").is_file():
        write_synthetic(config, folder, progress=False)
    recording, truth = read_recording_folder(folder)
    return to_spikeinterface_recording(recording), to_spikeinterface_sorting(truth)


def arm(name: str, checkpoint, recording, truth, args, folder: Path) -> dict:
    """One run_sorter('esort') arm: run time, what transferred, accuracy on the rest."""
    from spikeinterface.sorters import run_sorter

    import esort_jax.spikeinterface  # noqa: F401
    from esort_jax.evaluate import evaluate
    from esort_jax.io.spikeinterface import from_spikeinterface_sorting

    started = time.perf_counter()
    sorting = run_sorter("esort", recording, folder=folder, remove_existing_folder=True, labels=truth,
                         train_seconds=args.train_seconds, checkpoint=checkpoint, analyzer=False,
                         preprocess={"enabled": False}, windows={"spikes_per_unit": args.spikes_per_unit},
                         train={"epochs": args.epochs}, seed=0)
    wall = time.perf_counter() - started
    log = json.loads((folder / "spikeinterface_log.json").read_text())
    esort = json.loads((folder / "sorter_output" / "esort.json").read_text())
    fs = recording.get_sampling_frequency()
    span = (int(args.train_seconds * fs), recording.get_num_samples() - 60 + 1 + 29)
    scores = evaluate(from_spikeinterface_sorting(sorting), from_spikeinterface_sorting(truth), tolerance_ms=0.4,
                      identities="known", span=span).to_dict()
    return {"arm": name, "probe": args.probe, "channels": recording.get_num_channels(), "run_time_s": log["run_time"], "wall_s": wall,
            "seconds": log["esort"]["esort"]["seconds"], "backbone": log["esort"]["backbone"],
            "transferred": esort["transfer"]["transferred"], "units": esort["units"]["num_kept"],
            **{k: scores[k] for k in ("accuracy_pooled", "accuracy_mean", "precision_pooled", "recall_pooled",
                                      "well_detected")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probe", default="np1", choices=["np1", "np2", "dense"])
    parser.add_argument("--channels", type=int, default=None, help="a block of the probe's first sites (default: all)")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--train-seconds", type=float, default=30.0)
    parser.add_argument("--spikes-per-unit", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=Path("backbones_work"))
    parser.add_argument("--out", type=Path, default=Path("backbones.jsonl"))
    args = parser.parse_args()
    name = f"{args.probe}{args.channels or ''}"
    recording, truth = target(args.probe, args.channels, args.duration, args.seed, args.work / f"target_{name}")
    for arm_name, checkpoint in (("backbone", "auto"), ("scratch", None)):
        row = arm(arm_name, checkpoint, recording, truth, args, args.work / f"{name}_{arm_name}")
        with open(args.out, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(f"{row['probe']} {row['arm']}: {row['run_time_s']:.0f} s (fit {row['seconds']['fit']:.0f} s), "
              f"accuracy pooled {row['accuracy_pooled']:.3f}, mean {row['accuracy_mean']:.3f}, "
              f"well detected {row['well_detected']} of {row['units']}; transferred {row['transferred']}", flush=True)


if __name__ == "__main__":
    main()
