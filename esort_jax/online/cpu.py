"""CPU settings for streaming: small blocks, one call at a time.

Offline sorting runs large blocks, where XLA's CPU thread pool and asynchronous dispatch pay off.
The online sorter calls the network on blocks of 8 to 64 window positions, where handing each
call to a pool of threads costs more than the work (docs/online.md gives the figures measured
on the project's 2-core CPU, with and without these settings). Single-threaded kernels also
leave the other cores to acquisition.

Both settings are read when JAX creates its CPU client, so `configure_streaming_cpu` must run
before the first JAX computation of the process (experiments/online.py calls it first thing).
"""

from __future__ import annotations

import os

__all__ = ["configure_streaming_cpu", "SINGLE_THREAD_FLAG"]

SINGLE_THREAD_FLAG = "--xla_cpu_multi_thread_eigen=false"


def configure_streaming_cpu(single_thread_kernels: bool = True, inline_dispatch: bool = True,
                            cores: list[int] | None = None, realtime_priority: int | None = None) -> dict:
    """Set XLA's CPU matrix kernels to one thread (XLA_FLAGS), run computations inline
    (`jax_cpu_enable_async_dispatch` false) and, with `cores`, pin this process (and the
    threads it starts later) to those CPU cores, e.g. one kept free of acquisition and other
    work; with `realtime_priority` (1-99) run it under SCHED_FIFO at that priority, ahead of
    every ordinary process on its cores (needs root or CAP_SYS_NICE; it blocks while waiting for
    blocks, so it does not starve the core). Returns what is in effect. Raises RuntimeError if JAX's backends already exist (the
    settings would silently not apply), ValueError for cores this process may not use."""
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise RuntimeError("configure_streaming_cpu must run before the first JAX computation of the process")
    if cores is not None:
        allowed = os.sched_getaffinity(0)
        wanted = {int(c) for c in cores}
        if not wanted or not wanted <= allowed:
            raise ValueError(f"streaming_cpu.cores: {sorted(wanted)} is not a non-empty subset of the cores "
                             f"this process may use, {sorted(allowed)}")
        os.sched_setaffinity(0, wanted)
    if realtime_priority is not None:
        if not 1 <= int(realtime_priority) <= 99:
            raise ValueError(f"streaming_cpu.realtime_priority: must be 1-99 or null; got {realtime_priority}")
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(realtime_priority)))
        except PermissionError as error:
            raise PermissionError("streaming_cpu.realtime_priority: SCHED_FIFO needs root or CAP_SYS_NICE "
                                  "(or set it to null)") from error
    flags = os.environ.get("XLA_FLAGS", "")
    if single_thread_kernels and "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {SINGLE_THREAD_FLAG}".strip()
    if inline_dispatch:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    return {"xla_flags": os.environ.get("XLA_FLAGS", ""),
            "cpu_async_dispatch": bool(jax.config.read("jax_cpu_enable_async_dispatch")),
            "cores": sorted(os.sched_getaffinity(0)),
            "scheduler": "SCHED_FIFO" if os.sched_getscheduler(0) == os.SCHED_FIFO else "normal"}
