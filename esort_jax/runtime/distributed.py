"""Several processes, one training run: `jax.distributed` set-up and what the other modules ask
about the processes (the only module that calls jax.distributed).

    info = initialize(DistributedConfig(mode="auto"))      # SLURM / TPU pod / MPI: from the environment
    info = initialize(DistributedConfig(mode="explicit", coordinator_address="10.0.0.1:1234",
                                        num_processes=2, process_id=0))
    if is_primary(): ...                                   # files are written by process 0 only
    barrier("checkpoint epoch 3")                          # every process waits here for the others

After `initialize`, `jax.devices()` lists every process's devices: train.make_mesh spans them,
the global batch is sharded over all of them, each process feeds the rows of the batch its own
devices hold (`local_rows`; esort_jax.batches), and XLA reduces gradients and BatchNorm
statistics across processes. Checkpoints are written once, by process 0, through orbax's
multi-process options (`primary_checkpointer`); the others wait at a barrier. With one process
(mode 'none', the default) every function here is a no-op and nothing changes.

`initialize` must run before JAX computes anything (experiments._common.Run calls it first).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

import jax

from esort_jax.config import require

__all__ = ["DistributedConfig", "initialize", "process_info", "is_primary", "barrier", "local_rows",
           "primary_checkpointer"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-process run.

    Attributes:
      mode: 'none' (one process), 'auto' (coordinator, process count and id from the cluster's
        environment: SLURM, Cloud TPU pod slices, Open MPI; jax.distributed.initialize()), or
        'explicit' (the three values below).
      coordinator_address: 'host:port' of process 0 (explicit mode).
      num_processes: processes in the run (explicit mode).
      process_id: this process's id, 0 .. num_processes - 1 (explicit mode).
      initialization_timeout_s: how long to wait for every process to join.
    """

    mode: Literal["none", "auto", "explicit"] = "none"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    initialization_timeout_s: int = 300

    def validate(self, where: str = "distributed") -> None:
        require(self.mode in ("none", "auto", "explicit"), f"{where}.mode",
                f"must be 'none', 'auto' or 'explicit'; got {self.mode!r}")
        if self.mode == "explicit":
            require(bool(self.coordinator_address), f"{where}.coordinator_address", "required with mode=explicit")
            require(self.num_processes is not None and self.num_processes >= 1, f"{where}.num_processes",
                    f"must be >= 1 with mode=explicit; got {self.num_processes}")
            require(self.process_id is not None and 0 <= self.process_id < self.num_processes,
                    f"{where}.process_id", f"must lie in [0, {self.num_processes}); got {self.process_id}")
        require(self.initialization_timeout_s >= 1, f"{where}.initialization_timeout_s", "must be >= 1")


def initialize(config: DistributedConfig) -> dict:
    """Join the run `config` describes (once per process; nothing for mode 'none'); returns
    `process_info()`."""
    config.validate()
    if config.mode != "none" and not jax.distributed.is_initialized():
        explicit = config.mode == "explicit"
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address if explicit else None,
            num_processes=config.num_processes if explicit else None,
            process_id=config.process_id if explicit else None,
            initialization_timeout=config.initialization_timeout_s,
        )
        info = process_info()
        log.info("process %d of %d: %d local device(s) of %d", info["process_index"], info["process_count"],
                 info["local_device_count"], info["device_count"])
    return process_info()


def process_info() -> dict:
    """This process's index, the process count and the device counts (local and global)."""
    return {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "local_device_count": jax.local_device_count(), "device_count": jax.device_count()}


def is_primary() -> bool:
    """True in process 0 (the one that writes files); always True with one process."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def local_rows(sharding: jax.sharding.Sharding, shape: tuple[int, ...], axis: int) -> slice:
    """The rows along `axis` of a global array of `shape` laid out by `sharding` that this
    process's devices hold: the part of a batch this process feeds. One contiguous block (a
    1-D data mesh over jax.devices() gives each process consecutive devices)."""
    slices = [index[axis] for index in sharding.addressable_devices_indices_map(shape).values()]
    starts = sorted({s.start or 0 for s in slices})
    stops = sorted({shape[axis] if s.stop is None else s.stop for s in slices})
    if any(a != b for a, b in zip(starts[1:], stops[:-1])):
        raise ValueError(f"this process's devices hold rows {list(zip(starts, stops))} of axis {axis}: "
                         "not one block; order the mesh's devices by process")
    return slice(starts[0], stops[-1])


def primary_checkpointer():
    """An orbax PyTree checkpointer for a save that process 0 makes alone (the arrays are
    replicated, each process holds them all): orbax's multi-process options with process 0
    as the only active process, so it waits for no other process. With one process: the
    default PyTreeCheckpointer."""
    import orbax.checkpoint as ocp

    if jax.process_count() == 1:
        return ocp.PyTreeCheckpointer()
    alone = ocp.options.MultiprocessingOptions(primary_host=0, active_processes={0})
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=alone),
                            multiprocessing_options=alone)
