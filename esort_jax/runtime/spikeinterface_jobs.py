"""SpikeInterface's global job settings for a block of code (the one place that sets them).

    with spikeinterface_jobs(n_jobs=2, pool_engine="thread", progress_bar=False):
        ...   # SpikeInterface calls inside that read the global job kwargs

Threads, not forked processes, wherever JAX may already run in the process (forking it is unsafe).

The block also runs with one BLAS thread, and every native thread pool (BLAS, OpenMP) is put
back afterwards as it was. SpikeInterface's thread workers each wrap their chunk in
`threadpool_limits(1)`, but OpenBLAS's thread count is one number for the whole process:
concurrent workers save and restore it out of order and can leave it at 1 (worker A sets 1,
B saves that 1, A restores the old count, B restores 1; threadpoolctl issue #205). Products
computed afterwards with another thread count differ in their last bits: SpikeInterface's motion
interpolation (a matrix product per time bin) read the same 384-channel recording with values
one ulp apart from one process to the next, and the network trained on them ended elsewhere
(docs/claims.md, section 0). With the calling thread holding a limit for the whole block, it
holds threadpoolctl's control of OpenBLAS and the workers' limits change nothing; on the way out
the counts are put back, so what runs after the block sees the counts it had before.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["spikeinterface_jobs"]


@contextlib.contextmanager
def spikeinterface_jobs(**job_kwargs) -> Iterator[None]:
    """SpikeInterface's global job settings (n_jobs, pool_engine, progress_bar, ...) for the
    block, with one BLAS thread; the settings and every native thread pool's size are
    restored afterwards (module doc)."""
    from spikeinterface.core import get_global_job_kwargs, set_global_job_kwargs
    from threadpoolctl import threadpool_limits

    saved = dict(get_global_job_kwargs())
    # threadpoolctl's limiter records every pool's size on entry and puts all of them back on exit
    with threadpool_limits(limits=1, user_api="blas"):
        set_global_job_kwargs(**job_kwargs)
        try:
            yield
        finally:
            set_global_job_kwargs(**saved)
