"""Multi-process training with jax.distributed (esort_jax.runtime.distributed): two CPU processes
on 127.0.0.1 (one device each) pretrain the tiny config, each feeding its share of the global
batch, and reach the parameters of one process training the same global batch on two devices;
a 1-process run resumes from the checkpoint the two processes wrote and ends where the 1-process
run ends.

The reference has the two processes' mesh shape (2 devices): a Dense bias that feeds a
training-mode BatchNorm has a zero gradient in exact arithmetic, and Adam turns whatever
rounding noise stands in for that zero into full-size steps, so such a bias only matches where
the reductions happen in the same order."""

import json
import socket
from pathlib import Path

import jax
import numpy as np
import pytest

from esort_jax import checkpoint as ckpt
from esort_jax.runtime.distributed import DistributedConfig, local_rows
from tests._cluster import entry_point, environment, kill_group, run, started, tail

# Layer 1 by XLA (the native kernel is a 1-device path); windows gathered on the host, where each
# process gathers only its share of the batch.
PRETRAIN = ["data@source.data=tiny", "model=small", "train=tiny", "train.kernel=xla", "train.data_on_device=never",
            "logger=disabled"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _arrays(path: Path) -> dict:
    return ckpt.flatten_tree(ckpt.restore_arrays(path)["model"])


def _assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_distributed_config_is_validated():
    with pytest.raises(Exception, match="distributed.process_id"):
        DistributedConfig(mode="explicit", coordinator_address="127.0.0.1:1", num_processes=2, process_id=2).validate()
    DistributedConfig().validate()


def test_each_process_feeds_its_own_block_of_the_batch():
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
    assert local_rows(sharding, (60, 256, 16), axis=1) == slice(0, 256)  # one process: the whole batch


def test_two_processes_train_as_one_and_their_checkpoint_resumes_in_one(tmp_path):
    env = environment(tmp_path / "cache")
    two_devices = environment(tmp_path / "cache", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    one = entry_point("pretrain.py", *PRETRAIN, f"hydra.run.dir={tmp_path / 'one'}")
    port = _free_port()
    two = [entry_point("pretrain.py", *PRETRAIN, f"hydra.run.dir={tmp_path / 'two'}", "train.stop_after_epochs=1",
                       "distributed.mode=explicit", "distributed.num_processes=2",
                       f"distributed.coordinator_address=127.0.0.1:{port}", f"distributed.process_id={i}",
                       "distributed.initialization_timeout_s=120") for i in (0, 1)]
    logs = [tmp_path / f"two_{i}.log" for i in (0, 1)]
    with started(two[0], logs[0], env=env, cwd=tmp_path) as first, started(two[1], logs[1], env=env, cwd=tmp_path) as second:
        run(one, tmp_path / "one.log", env=two_devices, cwd=tmp_path, timeout=400)
        for process, log in ((first, logs[0]), (second, logs[1])):
            try:
                assert process.wait(timeout=400) == 0, tail(log)
            finally:
                kill_group(process)
    results = json.loads((tmp_path / "two" / "results.json").read_text())  # written once, by process 0
    assert results["devices"]["process_count"] == 2 and results["devices"]["global_device_count"] == 2
    assert (tmp_path / "two" / "process_1" / "metrics.jsonl").is_file()
    reference = json.loads((tmp_path / "one" / "results.json").read_text())
    assert results["train_windows"] == reference["train_windows"] and results["epochs_completed"] == 1
    np.testing.assert_allclose(results["history"][0]["train_loss"], reference["history"][0]["train_loss"], rtol=1e-4)
    epoch_1 = ckpt.epoch_checkpoint_path(tmp_path / "two" / "train", 1)
    _assert_close(_arrays(epoch_1), _arrays(ckpt.epoch_checkpoint_path(tmp_path / "one" / "train", 1)))
    # One process continues the two processes' run from their checkpoint, to the same end.
    output = run(entry_point("pretrain.py", *PRETRAIN, f"hydra.run.dir={tmp_path / 'two'}", "overwrite=true"),
                 tmp_path / "resume.log", env=two_devices, cwd=tmp_path, timeout=400)
    assert f"from {epoch_1}" in output
    _assert_close(_arrays(tmp_path / "two" / "checkpoint"), _arrays(tmp_path / "one" / "checkpoint"))
