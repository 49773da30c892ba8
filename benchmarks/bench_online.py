"""Online sorting benchmark: a recording replayed at real-time pace into the service, per
channel count and block duration; latency, compute time, keeping up, equality with the offline sort.

    .venv/bin/python benchmarks/bench_online.py --out runs/bench_online            # full: 64 + 384 ch (~35 min)
    .venv/bin/python benchmarks/bench_online.py --out bench_online_out --channels 64 --block-ms 1 --duration-s 10

Per channel count: a synthesised Neuropixels recording (NP1 sites; 64 channels: a block of the
shank at the default density, 384: 100 units), cached; the paper network trained briefly from
scratch on its first `--train-s` seconds (K labelled spikes per unit), its threshold chosen there;
the offline sort (`sort.sort_recording`) of the next `--duration-s` seconds as the reference.
Per block duration, three processes as in a deployment: `experiments/online.py` (the service,
warmed up before the clock starts), `experiments/replay.py` (the stretch preloaded, each block
sent when its last sample would have been acquired) and this script, subscribed to the spikes.

Figures (one row per (channels, block duration) under `runs` in DIR/results.json):
  compute_ms_*   time inside the sorter per push (a push takes every block queued: one block
                 while the service keeps up);
  latency_ms_*   per spike, publish time - (stream start + sample / fs): the wait for the block
                 to fill, the sorter's algorithmic delay (`final_after` samples), transport,
                 queueing and compute;
  late_fraction  blocks whose spikes were published after the next block was due;
  spikes_equal_offline, n_spikes, accuracy_online / accuracy_offline (pooled, 0.4 ms, against
                 the ground truth).
`breakdown` (one process, no sockets, the service's kernel and dispatch settings from
esort_jax.online.cpu, with the `--service streaming_cpu.*` overrides):
per block duration, one push (p50, p99), its device calls (network + smoothing) and the host
work (peak picking, bookkeeping); `breakdown_default_cpu`: the same with JAX's default CPU
settings, measured in the same run (the reference for what those settings change). `machine`: cores, CPU model,
JAX backend, load averages, the fp32 matmul peak measured at the start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from esort_jax.runtime.host_memory import configure_host_allocator  # noqa: E402

BLOCKS_MS = (0.5, 1.0, 2.0, 5.0, 10.0)


def describe_machine() -> dict:
    """Cores, CPU model, JAX backend and devices, load, matmul peak (esort_jax.runtime.benchmarking)."""
    import jax

    from esort_jax.runtime.benchmarking import load_average, matmul_peak_gflops

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 "unknown")
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    return {"cores": os.cpu_count(), "cpu_model": model, "avx512": "avx512f" in flags,
            "jax_backend": jax.default_backend(), "jax_version": jax.__version__,
            "devices": [str(d) for d in jax.local_devices()], "load_start": load_average(),
            "matmul_peak_gflops": round(matmul_peak_gflops(repeats=3)["peak"], 1)}


def recording_for(channels: int, seconds: float, cache: Path, seed: int):
    """(recording, truth, folder): NP1 sites, cached through esort_jax.runtime.artifacts."""
    from data_gen import SynthesisConfig
    from data_gen.config import ProbeConfig, UnitsConfig
    from esort_jax.io import read_recording_folder
    from esort_jax.runtime.artifacts import synthesised_recording

    probe = ProbeConfig(n_channels=channels, first_channel=160) if channels < 384 else ProbeConfig()
    units = UnitsConfig(n_units=100) if channels >= 384 else UnitsConfig()
    config = SynthesisConfig(duration_s=seconds, seed=seed, probe=probe, units=units)
    folder, _ = synthesised_recording(config, cache)
    recording, truth = read_recording_folder(folder)
    return recording, truth, folder


def trained_checkpoint(recording, truth, data_folder: Path, args) -> Path:
    """The paper network trained briefly from scratch on the first train_s seconds (cached),
    with the threshold chosen there saved beside it (sorting_defaults.json)."""
    from esort_jax.io.atomic import atomic_folder, write_json
    from esort_jax.pipeline import PipelineConfig, choose, fit
    from esort_jax.runtime.cache import cached
    from esort_jax.sort import SORTING_DEFAULTS
    from esort_jax.train import TrainConfig
    from esort_jax.windows import WindowConfig

    config = PipelineConfig(windows=WindowConfig(spikes_per_unit=args.train_k, short_units="keep_all"),
                            train=TrainConfig(epochs=args.train_epochs, progress=False))
    train_end = int(args.train_s * recording.sampling_frequency)
    key = {"role": "bench_online", "data": data_folder.name, "train_s": args.train_s, "k": args.train_k,
           "epochs": args.train_epochs, "seed": args.seed}

    def build(path: Path) -> None:
        work = Path(args.cache_dir).resolve() / "bench_online_work" / path.name
        fitted = fit(recording, truth, config, seed=args.seed, run_dir=work, train_span=(0, train_end),
                     eval_span=(train_end, recording.num_samples))
        threshold, _ = choose(fitted, recording, truth, config)
        with atomic_folder(path) as tmp:
            shutil.copytree(fitted.train_result.checkpoint, tmp / "checkpoint")
            write_json(tmp / "checkpoint" / SORTING_DEFAULTS, {"threshold": threshold})
        shutil.rmtree(work, ignore_errors=True)

    path, _ = cached(args.cache_dir, "bench_online", key, build)
    return path / "checkpoint"


def offline_reference(checkpoint: Path, recording, span) -> dict:
    """The offline sort of `span` with the checkpoint's network and threshold."""
    from esort_jax.online._shared import load_checkpoint
    from esort_jax.sort import sort_recording

    loaded = load_checkpoint(checkpoint)
    result = sort_recording(loaded.params, recording, loaded.metadata.unit_ids, threshold=loaded.threshold,
                            start=span[0], stop=span[1])
    return {"result": result, "params": loaded.params, "unit_ids": loaded.metadata.unit_ids,
            "threshold": loaded.threshold}


def service_cpu_settings(overrides) -> dict:
    """The service's `streaming_cpu` kernel and dispatch settings: conf/online.yaml's, with the
    benchmark's `--service streaming_cpu.KEY=VALUE` overrides (pinning and priority left out)."""
    import yaml

    settings = yaml.safe_load((REPO / "conf" / "online.yaml").read_text())["streaming_cpu"]
    for item in overrides:
        key, _, value = item.partition("=")
        if key.startswith("streaming_cpu."):
            settings[key.split(".", 1)[1]] = yaml.safe_load(value)
    return {k: settings[k] for k in ("single_thread_kernels", "inline_dispatch")}


def breakdown(checkpoint: Path, folder: Path, blocks_ms, cpu_settings: dict | None) -> list[dict]:
    """`breakdown_here` in a fresh process, with `cpu_settings` (esort_jax.online.cpu; None:
    JAX's defaults); they apply only before JAX starts."""
    command = [sys.executable, str(Path(__file__).resolve()), "--breakdown", str(checkpoint), str(folder),
               "--block-ms", *map(str, blocks_ms), "--cpu-settings", json.dumps(cpu_settings)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode:
        raise RuntimeError(f"breakdown failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def breakdown_here(checkpoint: Path, folder: Path, blocks_ms, seconds: float = 2.0) -> list[dict]:
    """Per block duration, in this process: one push (p50, p99), its device call (network +
    smoothing) and the host work (peak picking, bookkeeping), ms."""
    from esort_jax.io import read_recording_folder
    from esort_jax.online import OnlineSorter

    recording = read_recording_folder(folder)[0]
    sorter = OnlineSorter.from_checkpoint(checkpoint)
    sorter.warm_up()
    fs, rows = recording.sampling_frequency, []
    x = recording.read(0, int(seconds * fs))
    for block_ms in blocks_ms:
        size = max(int(round(block_ms * fs / 1000)), 1)
        sorter.reset()
        sorter.push(x[:sorter.params.window])
        pushes = [_timed(sorter.push, x[a:a + size]) for a in range(sorter.params.window, len(x) - size, size)]
        plan = sorter.compute.plan(size)
        device = []
        for _ in range(len(pushes)):
            started = time.perf_counter()
            for piece, valid in plan:
                rows_in = np.zeros((piece + sorter.params.window - 1, sorter.num_channels), np.float32)
                np.asarray(sorter.compute.run(rows_in, valid, sorter.compute.zero_tail())[0])
            device.append(1e3 * (time.perf_counter() - started))
        push_ms, device_ms = float(np.median(pushes)), float(np.median(device))
        rows.append({"block_ms": block_ms, "block_samples": size, "compiled_block_steps": [p for p, _ in plan],
                     "push_ms_p50": round(push_ms, 3), "push_ms_p99": round(float(np.percentile(pushes, 99)), 3),
                     "device_ms_p50": round(device_ms, 3), "host_ms_p50": round(max(push_ms - device_ms, 0.0), 3)})
    return rows


def _timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return 1e3 * (time.perf_counter() - started)


def _pinned_cores(pin: bool):
    """(service cores, replay + subscriber cores): with --pin the last core this process may use
    for the service, the others for the rest; without, (None, None): the OS schedules all."""
    if not pin:
        return None, None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise SystemExit("--pin needs at least 2 cores")
    return allowed[-1:], allowed[:-1]


def serve_and_replay(checkpoint: Path, data_folder: Path, block_ms: float, args, run_dir: Path) -> dict:
    """Run the service and the replay as processes; collect every spikes message with its header."""
    import zmq

    sockets = Path(tempfile.mkdtemp(prefix="esort-bench-"))
    ends = [f"service.input_endpoint=ipc://{sockets}/in", f"service.output_endpoint=ipc://{sockets}/out"]
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(f"ipc://{sockets}/out")
    serve = [str(REPO / "experiments/online.py"), f"checkpoint={checkpoint}", f"hydra.run.dir={run_dir}",
             "service.write_spikeinterface=false", f"max_seconds={args.duration_s + 900}", *args.service, *ends]
    feed = [str(REPO / "experiments/replay.py"), "checkpoint=unused", f"recording.path={data_folder}",
            f"replay.block_ms={block_ms}", f"replay.start_s={args.train_s}", f"replay.duration_s={args.duration_s}",
            "replay.preload=true", "replay.send_timeout_ms=600000", "replay.confirm_timeout_s=1800",  # a service
            "wait_for_service_s=900", f"hydra.run.dir={run_dir}/replay", *ends]  # far behind still gets every block
    service_cores, other_cores = _pinned_cores(args.pin)
    if service_cores:
        serve.append(f"streaming_cpu.cores=[{','.join(map(str, service_cores))}]")
    processes, previous = [], os.sched_getaffinity(0)
    try:
        for name, command in (("service", serve), ("replay", feed)):
            if name == "replay" and other_cores:  # the replay (inherits it) and this subscriber
                os.sched_setaffinity(0, other_cores)
            with open(run_dir.parent / f"{run_dir.name}.{name}.log", "w") as log:
                processes.append(subprocess.Popen([sys.executable, *command], cwd=REPO, stdout=log,
                                                  stderr=subprocess.STDOUT))
        service, replay = processes
        return _collect(sub, service, replay, run_dir / "replay", deadline=time.monotonic() + args.duration_s + 1800)
    finally:
        os.sched_setaffinity(0, previous)
        for process in reversed(processes):
            if process.poll() is None:
                process.kill()
                process.wait(10)
        context.destroy(linger=0)
        shutil.rmtree(sockets, ignore_errors=True)


def _collect(sub, service, replay, replay_dir: Path, deadline: float, stall_s: float = 120.0) -> dict:
    """Read spikes and events until the service says 'stopped'. SIGINT once the replay is done
    and its last block is sorted, or when no spikes message has come for `stall_s` (blocks lost)."""
    from esort_jax.online import protocol

    messages, events, interrupted, sent, last_message = [], [], False, None, time.monotonic()
    while time.monotonic() < deadline:
        if sub.poll(100):
            frames = sub.recv_multipart()
            if frames[0] == protocol.TOPIC_SPIKES:
                messages.append(protocol.unpack_spikes(frames))
                last_message = time.monotonic()  # status events keep coming from an idle service
            else:
                events.append(protocol.unpack_event(frames))
                if events[-1]["event"] == "stopped":
                    break
        if service.poll() is not None and not interrupted:
            raise RuntimeError(f"the service exited (code {service.returncode}) before it was stopped; see its log")
        if sent is None and replay.poll() is not None:
            if replay.returncode != 0:
                raise RuntimeError(f"replay failed (exit {replay.returncode}); see its log")
            sent = json.loads((replay_dir / "results.json").read_text())
        done = sent is not None and any(h.num_blocks and h.last_seq == sent["blocks"] - 1 for h, _ in messages)
        if not interrupted and (done or (sent is not None and time.monotonic() - last_message > stall_s)):
            service.send_signal(signal.SIGINT)
            interrupted = True
    else:
        raise TimeoutError("the benchmark run did not finish in time")
    service.wait(120)
    return {"messages": messages, "events": events, "replay": sent}


def summarise(collected: dict, reference: dict, truth, span, block_ms: float, fs: float) -> dict:
    """One results row from the spikes messages of a run (see the module doc)."""
    messages = collected["messages"]
    live = [(h, r) for h, r in messages if h.num_blocks]  # the final flush is not timed
    t0 = live[0][0].stream_t0
    compute = np.array([1e3 * h.compute_s for h, _ in live])
    latency = np.concatenate([1e3 * (h.publish_time - (t0 + r["sample"] / fs)) for h, r in live])
    # per spike, the part after its push's last block was sent (queue, sort, publish) ...
    after_send = np.concatenate([np.full(len(r), 1e3 * (h.publish_time - h.send_time)) for h, r in live])
    # ... the part before: from the spike's sample to the last sample of its push (the sorter's
    # algorithmic wait, longer for plateaus; the block filling up; blocks queued with it) ...
    data_wait = np.concatenate([1e3 * (h.end_sample - r["sample"]) / fs for h, r in live])
    # ... and per push, how late the replay sent that block (after its last sample was due)
    send_late = np.array([1e3 * (h.send_time - (t0 + h.end_sample / fs)) for h, _ in live])
    late, blocks = _late_blocks(live, block_ms, fs, t0)
    records = np.sort(np.concatenate([r for _, r in messages]), order=["sample", "unit"])
    equal, accuracy = _compare(records, reference, truth, span, fs)
    pct = lambda a, q: round(float(np.percentile(a, q)), 3) if a.size else None  # noqa: E731
    events = collected["events"]
    return {
        "n_channels": None, "block_ms": block_ms,
        "compute_ms_p50": pct(compute, 50), "compute_ms_p99": pct(compute, 99), "compute_ms_max": pct(compute, 100),
        "latency_ms_p50": pct(latency, 50), "latency_ms_p99": pct(latency, 99), "latency_ms_max": pct(latency, 100),
        "data_wait_ms_p50": pct(data_wait, 50), "data_wait_ms_p99": pct(data_wait, 99),
        "after_send_ms_p50": pct(after_send, 50), "after_send_ms_p99": pct(after_send, 99),
        "send_late_ms_p50": pct(send_late, 50), "send_late_ms_p99": pct(send_late, 99),
        "late_fraction": round(late / blocks, 5), "duration_s": (span[1] - span[0]) / fs,
        "spikes_equal_offline": equal, "n_spikes": int(records.size),
        "n_spikes_offline": reference["result"].sorting.num_spikes,
        "accuracy_online": accuracy[0], "accuracy_offline": accuracy[1],
        "blocks_sent": collected["replay"]["blocks"], "blocks_sorted": blocks,
        "blocks_per_push": round(blocks / len(live), 3), "pushes": len(live),
        "lag_ms_max": round(max(1e3 * (h.publish_time - h.send_time) for h, _ in live), 3),
        "replay_send_late_ms_max": round(collected["replay"]["send_late_ms_max"], 3),
        "errors_gaps_drops": [sum(e["event"] == k for e in events) for k in ("error", "gap", "dropped")],
    }


def _compare(records, reference: dict, truth, span, fs: float) -> tuple[bool, list]:
    """(online spikes == offline spikes, [pooled accuracy online, offline] against the truth)."""
    from esort_jax.evaluate import evaluate, scored_span
    from esort_jax.recording import Sorting

    offline, ids = reference["result"], reference["unit_ids"]
    equal = bool(records.size == offline.sorting.num_spikes
                 and np.array_equal(records["sample"] + span[0], offline.sorting.samples)
                 and np.array_equal(records["unit"], ids[offline.sorting.unit_indices])
                 and np.allclose(records["score"], offline.scores, rtol=1e-6, atol=1e-6))
    online = Sorting(records["sample"] + span[0], np.searchsorted(ids, records["unit"]), ids, fs)
    scored = scored_span(span, window=reference["params"].window, anchor=reference["params"].anchor)
    return equal, [round(float(evaluate(s, truth, span=scored).accuracy_pooled), 4) for s in (online, offline.sorting)]


def _late_blocks(live, block_ms: float, fs: float, t0: float) -> tuple[int, int]:
    """(late, total) blocks: a block is late when it was published after the next block was due,
    i.e. later than t0 + (its end sample + one block) / fs."""
    size = max(int(round(block_ms * fs / 1000)), 1)
    late = total = 0
    for header, _ in live:
        seqs = np.arange(header.first_seq, header.last_seq + 1)
        ends = np.minimum((seqs + 1) * size, header.end_sample)
        late += int(np.sum(header.publish_time > t0 + (ends + size) / fs))
        total += seqs.size
    return late, total


def run_channels(channels: int, args, out: Path, results: dict) -> None:
    """Every block duration for one channel count; results.json rewritten after each run."""
    from esort_jax.io.atomic import write_json
    from esort_jax.runtime.benchmarking import load_average

    seconds = args.train_s + args.duration_s + 1.0
    recording, truth, folder = recording_for(channels, seconds, args.cache_dir, args.seed)
    checkpoint = trained_checkpoint(recording, truth, folder, args)
    fs = recording.sampling_frequency
    span = (int(args.train_s * fs), int(args.train_s * fs) + int(round(args.duration_s * fs)))
    reference = offline_reference(checkpoint, recording, span)
    results["breakdown"][str(channels)] = breakdown(checkpoint, folder, args.block_ms, service_cpu_settings(args.service))
    results["breakdown_default_cpu"][str(channels)] = breakdown(checkpoint, folder, args.block_ms, None)
    for block_ms in args.block_ms:
        load = load_average()
        run_dir = out / "runs" / f"{channels}ch_{block_ms:g}ms"
        try:
            collected = serve_and_replay(checkpoint, folder, block_ms, args, run_dir)
            row = summarise(collected, reference, truth, span, block_ms, fs)
        except (RuntimeError, TimeoutError) as error:  # reported, the other runs still go
            print(f"{channels} ch {block_ms} ms failed: {error}", flush=True)
            row = {"n_channels": channels, "block_ms": block_ms, "error": str(error)}
        row.update(n_channels=channels, load_before=load, load_after=load_average())
        results["runs"].append(row)
        write_json(out / "results.json", results)
        print(_line(row) if "error" not in row else row, flush=True)


def _line(row: dict) -> str:
    r = row
    return (f"{r['n_channels']:4d} ch {r['block_ms']:5.1f} ms | compute p50/p99/max {r['compute_ms_p50']:.2f}/"
            f"{r['compute_ms_p99']:.2f}/{r['compute_ms_max']:.2f} ms | latency p50/p99/max "
            f"{r['latency_ms_p50']:.2f}/{r['latency_ms_p99']:.2f}/{r['latency_ms_max']:.2f} ms | "
            f"late {100 * r['late_fraction']:.2f}% | {r['blocks_per_push']:.2f} blocks/push | equal offline "
            f"{r['spikes_equal_offline']} ({r['n_spikes']} spikes) | accuracy {r['accuracy_online']:.3f} | "
            f"load {r['load_before'][0]:.1f}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="folder for results.json and the runs (required)")
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 384])
    parser.add_argument("--block-ms", type=float, nargs="+", default=list(BLOCKS_MS))
    parser.add_argument("--duration-s", type=float, default=60.0, help="replayed stretch, after the training span")
    parser.add_argument("--train-s", type=float, default=20.0, help="training span at the recording's start")
    parser.add_argument("--train-k", type=int, default=20, help="labelled spikes per unit for training")
    parser.add_argument("--train-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--service", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for experiments/online.py, e.g. online.exact=false online.min_steps=16")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("ESORT_CACHE_DIR", "cache")))
    parser.add_argument("--pin", action="store_true",
                        help="the service alone on the last core, the replay and this subscriber on the others")
    parser.add_argument("--breakdown", nargs=2, type=Path, metavar=("CHECKPOINT", "FOLDER"),
                        help="(internal) print the in-process breakdown as JSON and stop")
    parser.add_argument("--cpu-settings", default="null",
                        help="(with --breakdown) JSON of configure_streaming_cpu's arguments; null: JAX's defaults")
    args = parser.parse_args(argv)
    if args.breakdown:
        cpu_settings = json.loads(args.cpu_settings)
        if cpu_settings is not None:
            from esort_jax.online.cpu import configure_streaming_cpu

            configure_streaming_cpu(**cpu_settings)
        print(json.dumps(breakdown_here(*args.breakdown, args.block_ms)))
        return {}
    if args.out is None:
        parser.error("the following argument is required: --out")
    configure_host_allocator()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runs").mkdir(exist_ok=True)
    from esort_jax.runtime.provenance import provenance

    results = {"machine": describe_machine(), "runs": [], "breakdown": {}, "breakdown_default_cpu": {},
               "provenance": provenance(),
               "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    for channels in args.channels:
        run_channels(channels, args, args.out, results)
    results["machine"]["load_end"] = results["runs"][-1]["load_after"] if results["runs"] else None
    from esort_jax.io.atomic import write_json

    write_json(args.out / "results.json", results)
    return results


if __name__ == "__main__":
    main()
