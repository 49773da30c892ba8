"""experiments/online.py and experiments/replay.py as processes: the replay streams a recording
folder to the service over ipc sockets, the service publishes spikes equal to the offline sort,
and SIGINT makes it write them to its sorting folder and results.json. Bounded: every wait has
a timeout and the service is killed in `finally`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from hydra import compose, initialize_config_dir

from esort_jax.checkpoint import make_metadata, save_checkpoint
from esort_jax.config import from_dict
from esort_jax.infer import fold_batchnorm
from esort_jax.io import read_sorting_npz, write_recording_folder
from esort_jax.online import OnlineConfig, protocol
from esort_jax.online.replay import ReplayConfig
from esort_jax.online.service import ServiceConfig
from esort_jax.sort import SORTING_DEFAULTS, sort_recording
from esort_jax.train import init_model
from tests._tiny import TINY_MODEL, tiny_recording

REPO = Path(__file__).resolve().parent.parent


def test_online_config_composes_into_the_library_configs():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("online", overrides=["checkpoint=x", "replay.block_ms=2", "service.max_lag_ms=50"])
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    assert from_dict(ReplayConfig, plain["replay"], "replay").block_ms == 2.0
    assert from_dict(ServiceConfig, plain["service"], "service").max_lag_ms == 50.0
    assert from_dict(OnlineConfig, plain["online"], "online") == OnlineConfig()


def _read_until(sub, records, done, timeout_s):
    """Collect spike records from `sub` until done(header or event) holds (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sub.poll(100):
            frames = sub.recv_multipart()
            if frames[0] == protocol.TOPIC_SPIKES:
                header, batch = protocol.unpack_spikes(frames)
                records.append(batch)
                if done(header):
                    return
            elif done(protocol.unpack_event(frames)):
                return
    raise AssertionError(f"timed out after {timeout_s} s")


@pytest.mark.slow  # two processes importing JAX, warm-up and SpikeInterface: ~15-30 s
def test_replay_into_the_service_then_sigint(tmp_path):
    recording, truth = tiny_recording(duration_s=0.3)
    write_recording_folder(tmp_path / "rec", recording, truth)
    model = init_model(8, 3, TINY_MODEL, seed=1)
    model.eval()
    checkpoint = save_checkpoint(tmp_path / "ck", model, make_metadata(model, unit_ids=[7, 8, 9], recording=recording))
    (checkpoint / SORTING_DEFAULTS).write_text(json.dumps({"threshold": 4.0}))
    endpoints = [f"service.input_endpoint=ipc://{tmp_path}/in", f"service.output_endpoint=ipc://{tmp_path}/out"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(f"ipc://{tmp_path}/out")
    service = subprocess.Popen(
        [sys.executable, str(REPO / "experiments/online.py"), f"checkpoint={checkpoint}", "online.max_steps=256",
         f"hydra.run.dir={tmp_path}/serve", "max_seconds=300", *endpoints],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        replay = subprocess.run(
            [sys.executable, str(REPO / "experiments/replay.py"), "checkpoint=unused", f"recording.path={tmp_path}/rec",
             "replay.block_ms=5", "replay.realtime=false", f"hydra.run.dir={tmp_path}/replay", *endpoints],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
        assert replay.returncode == 0, replay.stdout[-2000:] + replay.stderr[-2000:]
        records: list = []
        last_block = lambda m: getattr(m, "num_blocks", 0) and m.last_seq == 59  # noqa: E731  (9600 / 160 - 1)
        _read_until(sub, records, last_block, timeout_s=60)
        service.send_signal(signal.SIGINT)  # the last spikes come with the flush at shutdown
        _read_until(sub, records, lambda m: isinstance(m, dict) and m["event"] == "stopped", timeout_s=120)
        out, _ = service.communicate(timeout=60)
        assert service.returncode == 0, out[-3000:]
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(10)
        context.destroy(linger=0)
    offline = sort_recording(fold_batchnorm(model), recording, [7, 8, 9], threshold=4.0)
    records = np.sort(np.concatenate(records), order=["sample", "unit"])
    np.testing.assert_array_equal(records["sample"], offline.sorting.samples)
    np.testing.assert_array_equal(records["score"], offline.scores)
    results = json.loads((tmp_path / "serve" / "results.json").read_text())
    assert results["status"] == "ok" and results["blocks"] == 60 and results["spikes"] == offline.sorting.num_spikes
    assert json.loads((tmp_path / "replay" / "results.json").read_text())["blocks"] == 60
    saved = read_sorting_npz(tmp_path / "serve" / "sorting" / "sorting.npz")
    np.testing.assert_array_equal(saved.samples, offline.sorting.samples)
    assert (tmp_path / "serve" / "sorting" / "si").is_dir()


def test_finetune_on_causal_preprocessing_then_sort_and_online_agree(tmp_path):
    """finetune.py causal_preprocess=... records the causal filter in the checkpoint; sort.py
    applies it to the raw recording, and the online sorter (preprocess=checkpoint) fed the raw
    samples in odd blocks gives the same spikes."""
    from esort_jax.checkpoint import read_metadata
    from esort_jax.io import read_recording_folder
    from esort_jax.online import OnlineSorter
    from esort_jax.online.causal import EXTRA_KEY

    cache = f"cache_dir={tmp_path / 'cache'}"
    run = lambda script, *o: subprocess.run([sys.executable, str(REPO / "experiments" / script), *o],  # noqa: E731
                                            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
                                            capture_output=True, text=True, timeout=600)
    fine = run("finetune.py", "data@target.data=tiny", "model=small", "train=tiny", "k=3", "init=scratch",
               "logger=disabled", cache, "causal_preprocess={freq_min_hz: 400.0, order: 3}",
               f"hydra.run.dir={tmp_path / 'fine'}")
    assert fine.returncode == 0, fine.stderr[-3000:]
    checkpoint = tmp_path / "fine" / "checkpoint"
    recorded = read_metadata(checkpoint).extra[EXTRA_KEY]
    assert recorded["freq_min_hz"] == 400.0 and recorded["order"] == 3
    bad = run("finetune.py", "data@target.data=tiny", "model=small", "train=tiny", "init=scratch", "logger=disabled",
              cache, "causal_preprocess={order: 0}", f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode != 0 and "causal_preprocess.order" in bad.stderr
    sort = run("sort.py", "data@recording.data=tiny", "logger=disabled", cache, f"checkpoint={checkpoint}",
               f"hydra.run.dir={tmp_path / 'sort'}")
    assert sort.returncode == 0, sort.stderr[-3000:]
    assert json.loads((tmp_path / "sort" / "results.json").read_text())["recording"]["causal_preprocess"] == recorded
    offline = read_sorting_npz(tmp_path / "sort" / "sorting" / "sorting.npz")
    raw = read_recording_folder(next((tmp_path / "cache" / "recordings").iterdir()))[0]
    sorter = OnlineSorter.from_checkpoint(checkpoint, config=OnlineConfig(max_steps=256))
    sorter.warm_up()
    x, online, start = raw.read(), [], 0
    for size in np.random.default_rng(3).integers(1, 500, 10_000):
        if start >= len(x):
            break
        online.append(sorter.push(x[start:start + size]))
        start += size
    online.append(sorter.flush())
    assert len(offline.samples) > 0
    got = sorted(zip(np.concatenate([b.samples for b in online]).tolist(), np.concatenate([b.ids for b in online]).tolist()))
    want = sorted(zip(offline.samples.tolist(), np.asarray(offline.unit_ids)[offline.unit_indices].tolist()))
    assert got == want
