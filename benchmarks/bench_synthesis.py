"""Benchmark data_gen: synthesise a drifting Neuropixels recording into a recording folder.

    .venv/bin/python benchmarks/bench_synthesis.py [--durations 30 120] [--channels 384]
        [--drift slow|nonrigid|fast|none] [--dtype float32|int16] [--modes write read]
        [--repeats 1] [--out results.json]

Each (duration, mode) runs in a fresh subprocess (--repeats times, alternating over the
(duration, mode) pairs; the summary gives the median [min–max] of the real-time factor and
of the peak RSS over repeats), so its peak RSS (ru_maxrss) is its own.
`write` streams the recording into a temporary folder with `write_synthetic` (atomic,
fsync'ed by esort_jax.io); `read` only computes every chunk (synthesis without the disk).
Reported: wall seconds, seconds of recording per wall second (x real time), setup seconds
(units, templates, spike trains), CPU seconds (user + system, all threads: less sensitive to
other jobs than wall time), ru_maxrss, and the peak anonymous RSS sampled every 20 ms, plus
the 1-minute load average before and after (other jobs on the machine skew the figures).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from esort_jax.runtime.benchmarking import load_average, machine, spread  # noqa: E402


def _rss_anon_mb() -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _config(duration: float, channels: int, drift: str, seed: int, slow_velocity: float | None = None) -> dict:
    drift_config = {"mode": drift}
    if slow_velocity is not None:
        drift_config["slow_velocity_um_per_min"] = slow_velocity
    return {
        "duration_s": duration,
        "seed": seed,
        "probe": {"name": "np1", "n_channels": channels},
        "units": {"density_per_mm3": 10000.0},
        "drift": drift_config,
    }


def child(args) -> dict:
    """One measurement (this process): synthesis set-up, then reading every chunk or writing the
    recording folder; wall and CPU seconds, peak RSS (ru_maxrss, and anonymous RSS sampled every
    20 ms), load before and after."""
    from data_gen import synthesize

    peak_anon = [0.0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak_anon[0] = max(peak_anon[0], _rss_anon_mb())
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    config = _config(args.duration, args.channels, args.drift, args.seed, args.slow_velocity)
    load_before = load_average()[0]
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    recording, truth = synthesize(config)
    setup = time.perf_counter() - start
    result = {
        "duration_s": args.duration, "mode": args.mode, "channels": recording.num_channels, "drift": args.drift,
        "slow_velocity_um_per_min": args.slow_velocity, "dtype": args.dtype, "chunk_samples": args.chunk_samples,
        "read_ahead": args.read_ahead, "num_units": truth.num_units, "num_spikes": truth.num_spikes,
        "setup_s": round(setup, 3),
    }
    if args.mode == "read":
        wall = setup + _time_read(recording, args)
    else:
        del recording, truth
        wall, result["bytes_written"] = _time_write(config, args)  # includes its own synthesize() setup
    done.set()
    sampler.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    result.update(
        cpu_s=round(cpu, 2),
        wall_s=round(wall, 3),
        x_realtime=round(args.duration / wall, 2),
        ru_maxrss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        peak_rss_anon_mb=round(peak_anon[0], 1),
        load_before=round(load_before, 2),
        load_after=load_average()[0],
    )
    return result


def _time_read(recording, args) -> float:
    """Seconds to compute every chunk of the (lazily synthesised) recording."""
    recording.traces.read_ahead = args.read_ahead
    start = time.perf_counter()
    for _ in recording.iter_chunks(args.chunk_samples):
        pass
    return time.perf_counter() - start


def _time_write(config: dict, args) -> tuple[float, int]:
    """(seconds, bytes of traces) to write the recording folder into a temporary folder."""
    from data_gen import write_synthetic

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        folder = Path(tmp) / "rec"
        gain = 0.05 if args.dtype == "int16" else 1.0
        start = time.perf_counter()
        write_synthetic(
            config, folder, chunk_samples=args.chunk_samples, progress=False, dtype=args.dtype,
            gain_to_uv=gain, read_ahead=args.read_ahead,
        )
        return time.perf_counter() - start, (folder / "traces.npy").stat().st_size


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--durations", type=float, nargs="+", default=[30.0, 120.0])
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--drift", default="slow", choices=["none", "slow", "fast", "nonrigid"])
    parser.add_argument("--slow-velocity", type=float, default=None,
                        help="drift.slow_velocity_um_per_min (default: the config's 10 µm/min, which "
                             "sweeps its 30 µm range in 3 min, so shorter recordings need fewer "
                             "precomputed template positions)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "int16"])
    parser.add_argument("--modes", nargs="+", default=["write"], choices=["write", "read"])
    parser.add_argument("--chunk-samples", type=int, default=32768)
    parser.add_argument("--read-ahead", type=int, default=2, help="chunks synthesised ahead of the writer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", default=None, help="folder for the temporary recording (default: system temp)")
    parser.add_argument("--repeats", type=int, default=1, help="fresh-process runs per (duration, mode)")
    parser.add_argument("--out", default=None, help="write the results as JSON here (default: stdout)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return

    results = [_run_child(args, duration, mode)
               for _ in range(args.repeats) for duration in args.durations for mode in args.modes]
    header = (
        f"{'dur s':>6} {'mode':>5} {'ch':>4} {'units':>5} {'spikes':>7} {'setup s':>7} {'wall s':>7} "
        f"{'x real':>6} {'cpu s':>6} {'maxrss MB':>9} {'anon MB':>8} {'load':>10}"
    )
    print("\n" + header + "\n" + "\n".join(_row(r) for r in results), file=sys.stderr)
    summary = _summary(results)
    if args.repeats > 1:
        for row in summary:
            print(f"{row['duration_s']:>6.0f} {row['mode']:>5}: x real time {row['x_realtime_median']:.2f} "
                  f"[{row['x_realtime_range'][0]:.2f}–{row['x_realtime_range'][1]:.2f}], peak RSS "
                  f"{row['ru_maxrss_mb_median']:.0f} MB [{row['ru_maxrss_mb_range'][0]:.0f}–"
                  f"{row['ru_maxrss_mb_range'][1]:.0f}] (median [min–max] over {args.repeats})", file=sys.stderr)
    payload = {
        "benchmark": "data_gen synthesis",
        "probe": "np1",
        "sampling_frequency": 32000.0,
        "machine": machine(with_jax=False),
        "results": results,
        "summary": summary,
    }
    text = json.dumps(payload, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)


def _run_child(args, duration: float, mode: str) -> dict:
    """One (duration, mode) measurement in a fresh subprocess of this script."""
    command = [
        sys.executable, __file__, "--child", "--duration", str(duration), "--mode", mode,
        "--channels", str(args.channels), "--drift", args.drift, "--dtype", args.dtype,
        "--chunk-samples", str(args.chunk_samples), "--seed", str(args.seed),
        "--read-ahead", str(args.read_ahead),
    ]
    if args.slow_velocity is not None:
        command += ["--slow-velocity", str(args.slow_velocity)]
    if args.tmp:
        command += ["--tmp", args.tmp]
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print("done:", _row(result), file=sys.stderr, flush=True)
    return result


def _summary(results: list[dict]) -> list[dict]:
    """Per (duration, mode): median and [min, max] of x_realtime, wall_s and ru_maxrss_mb."""
    out = []
    for key in dict.fromkeys((r["duration_s"], r["mode"]) for r in results):
        runs = [r for r in results if (r["duration_s"], r["mode"]) == key]
        row = {"duration_s": key[0], "mode": key[1], "runs": len(runs)}
        for name in ("x_realtime", "wall_s", "ru_maxrss_mb"):
            s = spread([r[name] for r in runs])
            row.update({f"{name}_median": s.median, f"{name}_range": s.range()})
        out.append(row)
    return out


def _row(r: dict) -> str:
    return (
        f"{r['duration_s']:>6.0f} {r['mode']:>5} {r['channels']:>4} {r['num_units']:>5} {r['num_spikes']:>7} "
        f"{r['setup_s']:>7.2f} {r['wall_s']:>7.2f} {r['x_realtime']:>6.2f} {r['cpu_s']:>6.2f} {r['ru_maxrss_mb']:>9.0f} "
        f"{r['peak_rss_anon_mb']:>8.0f} {r['load_before']:>4.1f}->{r['load_after']:<4.1f}"
    )


if __name__ == "__main__":
    main()
