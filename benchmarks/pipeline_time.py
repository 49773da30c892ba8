"""Whole-pipeline time of labeller + E-Sort against the labeller alone, and the break-even length
(issue 17, item 4; docs/claims.md). Every part is timed on one machine in one run:

    python benchmarks/pipeline_time.py --channels 64 --lengths 30 60 180 --out time64.json
    python benchmarks/pipeline_time.py --channels 384 --lengths 30 120 600 --sorters tridesclous2 --out time384.json
    python benchmarks/pipeline_time.py --table time64.json         # table and plot from a saved run

A synthetic Neuropixels-1.0 recording (data_gen, the np1 preset: 64 channels = small64's block,
or all 384) of the longest length is written as raw int16 (2.34375 µV per bit, NP1's AP gain)
and everything reads that file. For each sorter: its run (SpikeInterface's run_sorter, wall
time) on the first L seconds for every L of --lengths (the first is the training span: those are
the labels); E-Sort: the backbone (pretrained on a source synthesised on the same geometry:
timed when built, 0 on a cache hit), fine-tuning on the labeller's units of the training span,
the threshold sweep, and sorting the rest from the raw int16 file through SpikeInterface's
band-pass filter and median reference (esort_from_labels; the sort of the rest is timed on its
own). Each sorter first runs once, untimed, on 5 s (warm_up_labeller). The labeller's line is
fitted to its two SHORTEST runs and E-Sort's per-second cost to
the second length, then both are checked against the longest measured length.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GAIN_UV = 2.34375  # Neuropixels 1.0 AP band: 1.2 V / 1024 levels / gain 500


def raw_recording(channels: int, length_s: float, folder: Path):
    """(our Recording over the int16 file, truth): np1 (or small64's 64-channel block), written once."""
    from data_gen import SynthesisConfig, write_synthetic
    from data_gen.config import ProbeConfig
    from esort_jax.io import read_recording_folder

    if not (folder / "metadata.json").exists():
        probe = ProbeConfig(n_channels=channels, first_channel=160) if channels < 384 else ProbeConfig()
        write_synthetic(SynthesisConfig(duration_s=length_s, seed=0, probe=probe), folder, dtype="int16",
                        gain_to_uv=GAIN_UV, progress=False)
    return read_recording_folder(folder)


def time_labeller(name: str, recording, length_s: float, folder: Path) -> dict:
    """The sorter on [0, length_s): its wall seconds and sorting (cached in `folder`)."""
    from esort_jax.io import read_sorting_npz, write_sorting_npz
    from esort_jax.realdata.baselines import run_baseline

    if (folder / "time.json").exists():
        return {**json.loads((folder / "time.json").read_text()), "sorting": read_sorting_npz(folder / "sorting.npz")}
    result = run_baseline(name, recording, folder, span=(0, int(length_s * recording.sampling_frequency)), n_jobs=2,
                          params={"torch_device": "cpu"} if name == "kilosort4" else None)
    write_sorting_npz(folder / "sorting.npz", result.sorting)
    entry = {"length_s": length_s, "seconds": result.wall_seconds, "units": int(result.sorting.num_units),
             "load": os.getloadavg()}
    (folder / "time.json").write_text(json.dumps(entry))
    return {**entry, "sorting": result.sorting}


def warm_up_labeller(name: str, recording, folder: Path, seconds: float = 5.0) -> None:
    """Run the sorter once on the first `seconds`, untimed: its one-time start-up (numba
    compilation, imports) would otherwise fall on the first timed run only and tilt the line
    fitted to the two shortest runs (Tridesclous2: 45 s on 30 s of data, 28 s on 60 s). The
    labeller alone and labeller + E-Sort each pay that start-up once, so it is left out of both."""
    from esort_jax.realdata.baselines import run_baseline

    run_baseline(name, recording, folder, span=(0, int(seconds * recording.sampling_frequency)), n_jobs=2,
                 params={"torch_device": "cpu"} if name == "kilosort4" else None)


def time_backbone(recording, cache: Path) -> dict:
    """The backbone for this geometry (benchmarks/never_worse.backbone): seconds, cache hit (then
    the seconds are only the cache read: pretraining was not timed by this run)."""
    from benchmarks.never_worse import backbone_and_hit
    from esort_jax.io import to_spikeinterface_recording

    started = time.perf_counter()
    checkpoint, hit = backbone_and_hit(to_spikeinterface_recording(recording), cache)
    return {"checkpoint": str(checkpoint), "seconds": time.perf_counter() - started, "cache_hit": hit}


def pretrain_seconds(result: dict) -> float | None:
    """Pretraining's wall seconds: measured by this run, or given with --pretrain-s (from the run
    that built the cached backbone); None when the backbone was a cache hit and none was given."""
    backbone = result["backbone"]
    if backbone.get("pretrain_s_given") is not None:
        return float(backbone["pretrain_s_given"])
    return None if backbone.get("cache_hit") else float(backbone["seconds"])


def time_esort(recording, labels, length_s: float, train_s: float, checkpoint: str) -> dict:
    """E-Sort trained on `labels` of [0, train_s), sorting the rest of [0, length_s) from the raw
    int16 traces with SpikeInterface's preprocessing (module doc): the parts' wall seconds."""
    from esort_jax.io import to_spikeinterface_recording
    from esort_jax.realdata.preprocess import PreprocessConfig
    from esort_jax.realdata.workflow import esort_from_labels

    raw = to_spikeinterface_recording(recording).frame_slice(0, int(length_s * recording.sampling_frequency))
    result = esort_from_labels(raw, labels, train_seconds=train_s, checkpoint=checkpoint, preprocess=PreprocessConfig())
    timing = result.timing()
    return {"length_s": length_s, "finetune_s": timing["fit_seconds"], "threshold_s": timing["threshold_seconds"],
            "sort_rest_s": timing["sort_rest_seconds"], "rest_s": timing["rest_duration_s"],
            "units": int(result.fitted.windows.num_units), "load": os.getloadavg()}


def measure(args) -> dict:
    """Every timed part (module doc), written to --out after each sorter."""
    work, lengths = Path(args.work), sorted(args.lengths)
    recording, _ = raw_recording(args.channels, lengths[-1], work / f"recording{args.channels}")
    out = {"channels": args.channels, "lengths_s": lengths, "train_s": lengths[0], "cpus": os.cpu_count(),
           "load_at_start": os.getloadavg(), "backbone": time_backbone(recording, Path(args.cache)), "sorters": {}}
    if args.pretrain_s is not None:
        out["backbone"]["pretrain_s_given"] = args.pretrain_s
    for name in args.sorters:
        warm_up_labeller(name, recording, work / f"{name}{args.channels}" / "warm_up")
        runs = [time_labeller(name, recording, length, work / f"{name}{args.channels}" / f"L{length:g}")
                for length in lengths]
        labels = runs[0].pop("sorting")
        for run in runs[1:]:
            run.pop("sorting")
        esort = [time_esort(recording, labels, length, lengths[0], out["backbone"]["checkpoint"])
                 for length in lengths[1:]]
        out["sorters"][name] = {"labeller": runs, "esort": esort}
        Path(args.out).write_text(json.dumps(out, indent=1))
    return out


def model(run: dict, pretrain_s: float):
    """(PipelineTimes from the two shortest labeller runs and the first E-Sort run, the check at
    the longest length: measured and predicted seconds of both methods)."""
    from esort_jax.report.breakeven import PipelineTimes, fit_linear

    labeller, esort = run["labeller"], run["esort"]
    first = esort[0]
    times = PipelineTimes(labeller=fit_linear([(r["length_s"], r["seconds"]) for r in labeller[:2]]),
                          train_span_s=labeller[0]["length_s"], pretrain_s=pretrain_s, finetune_s=first["finetune_s"],
                          threshold_s=first["threshold_s"], sort_s_per_s=first["sort_rest_s"] / first["rest_s"])
    last, last_e = labeller[-1], esort[-1]
    measured_e = labeller[0]["seconds"] + pretrain_s + last_e["finetune_s"] + last_e["threshold_s"] + last_e["sort_rest_s"]
    check = {"length_s": last["length_s"], "labeller_s": last["seconds"],
             "labeller_predicted_s": float(times.labeller.at(last["length_s"])),
             "esort_s": measured_e, "esort_predicted_s": float(times.total(last["length_s"]))}
    return times, check


def table(result: dict) -> str:
    """Markdown: per sorter, the measured parts, the break-even length (backbone cached, or
    pretrained in the run) and the check at the longest length."""
    from esort_jax.report.breakeven import break_even_s

    pretrain = pretrain_seconds(result)
    source = ("given with --pretrain-s" if result["backbone"].get("pretrain_s_given") is not None else
              "read from the cache: pretraining not timed" if result["backbone"].get("cache_hit") else "built in this run")
    lines = [f"{result['channels']} channels, training span {result['train_s']:g} s, backbone "
             + ("?" if pretrain is None else f"{pretrain:.0f} s") + f" ({source})", "",
             "| labeller | labeller s / data s (fit) | start-up s | fine-tune s | threshold s | E-Sort sort s / data s "
             "(raw int16 + preprocessing) | break-even, backbone cached | with pretraining | check at "
             "the longest length: labeller measured / predicted | labeller + E-Sort measured / predicted |",
             "|" + "---|" * 10]
    for name, run in result["sorters"].items():
        times, check = model(run, 0.0)
        with_pretrain = None if pretrain is None else break_even_s(model(run, pretrain)[0])
        star = break_even_s(times)
        fmt = lambda s: "never" if s is None else f"{s:.0f} s ({s / 60:.1f} min)"  # noqa: E731
        lines.append(f"| {name} | {times.labeller.slope:.2f} | {times.labeller.intercept_s:.0f} | {times.finetune_s:.0f} | "
                     f"{times.threshold_s:.1f} | {times.sort_s_per_s:.3f} | {fmt(star)} | {'not timed' if pretrain is None else fmt(with_pretrain)} | "
                     f"{check['labeller_s']:.0f} / {check['labeller_predicted_s']:.0f} s at {check['length_s']:g} s | "
                     f"{check['esort_s']:.0f} / {check['esort_predicted_s']:.0f} s |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Time vs recording length per labeller, alone and with E-Sort (backbone cached), measured points."""
    from esort_jax.report.breakeven import break_even_s, plot_break_even

    curves, points = {}, []
    for name, run in result["sorters"].items():
        curves[name], _ = model(run, 0.0)
        points += [{"length_s": r["length_s"], "seconds": r["seconds"]} for r in run["labeller"]]
        first = run["labeller"][0]["seconds"]
        points += [{"length_s": e["length_s"], "marker": "x",
                    "seconds": first + e["finetune_s"] + e["threshold_s"] + e["sort_rest_s"]} for e in run["esort"]]
    crossings = [x for x in (break_even_s(times) for times in curves.values()) if x is not None]
    longest = max([3600.0, 2 * max(result["lengths_s"])] + [1.25 * x for x in crossings])  # show where they cross
    plot_break_even(curves, path, measured=points, max_length_s=min(longest, 86400.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--lengths", type=float, nargs="+", default=[30.0, 60.0, 180.0])
    parser.add_argument("--sorters", nargs="+", default=["tridesclous2", "spykingcircus2", "kilosort4"])
    parser.add_argument("--work", default="pipeline_time_work")
    parser.add_argument("--cache", default="cache")
    parser.add_argument("--out", default="pipeline_time.json")
    parser.add_argument("--table", help="print the table of this saved run (and write its plot beside it)")
    parser.add_argument("--pretrain-s", type=float, default=None,
                        help="pretraining's wall seconds measured by the run that built the cached backbone "
                             "(for the 'with pretraining' column when this run's backbone is a cache hit)")
    args = parser.parse_args()
    if args.pretrain_s is not None and not args.pretrain_s > 0:
        parser.error(f"--pretrain-s must be > 0; got {args.pretrain_s}")
    if args.table:
        result = json.loads(Path(args.table).read_text())
        if args.pretrain_s is not None:
            result["backbone"]["pretrain_s_given"] = args.pretrain_s
    else:
        from esort_jax.runtime.host_memory import configure_host_allocator

        configure_host_allocator()
        result = measure(args)
    print(table(result))
    plot(result, Path(args.table or args.out).with_suffix(".png"))


if __name__ == "__main__":
    main()
