"""SpikeInterface's global job settings for a block of code (the one place that sets them).

    with spikeinterface_jobs(n_jobs=2, pool_engine="thread", progress_bar=False):
        ...   # SpikeInterface calls inside that read the global job kwargs

Threads, not forked processes, wherever JAX may already run in the process (forking it is unsafe).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["spikeinterface_jobs"]


@contextlib.contextmanager
def spikeinterface_jobs(**job_kwargs) -> Iterator[None]:
    """SpikeInterface's global job settings (n_jobs, pool_engine, progress_bar, ...) for the
    block, restored afterwards."""
    from spikeinterface.core import get_global_job_kwargs, set_global_job_kwargs

    saved = dict(get_global_job_kwargs())
    set_global_job_kwargs(**job_kwargs)
    try:
        yield
    finally:
        set_global_job_kwargs(**saved)
