"""spikeinterface_jobs: SpikeInterface's global job settings for a block, restored afterwards
(also when the block raises)."""

import pytest
from spikeinterface.core import get_global_job_kwargs

from esort_jax.runtime.spikeinterface_jobs import spikeinterface_jobs


def test_settings_hold_inside_and_are_restored_even_on_error():
    before = dict(get_global_job_kwargs())
    with spikeinterface_jobs(n_jobs=3, pool_engine="thread", progress_bar=False):
        inside = get_global_job_kwargs()
        assert inside["n_jobs"] == 3 and inside["pool_engine"] == "thread" and inside["progress_bar"] is False
    assert dict(get_global_job_kwargs()) == before
    with pytest.raises(RuntimeError, match="boom"):
        with spikeinterface_jobs(n_jobs=2):
            raise RuntimeError("boom")
    assert dict(get_global_job_kwargs()) == before


def _pool_sizes() -> list[tuple[str, str, int]]:
    from threadpoolctl import threadpool_info

    return [(pool["user_api"], pool["filepath"], pool["num_threads"]) for pool in threadpool_info()]


def _blas_sizes() -> set[int]:
    return {size for api, _, size in _pool_sizes() if api == "blas"}


def test_one_blas_thread_inside_and_every_pool_size_restored_even_when_the_block_leaks_one():
    """SpikeInterface's thread workers can leave OpenBLAS's process-wide thread count changed
    (module doc): whatever the block leaves behind, the sizes afterwards are the ones before."""
    from threadpoolctl import threadpool_limits

    before = _pool_sizes()
    assert _blas_sizes(), "numpy should be linked to a BLAS that threadpoolctl controls"
    with spikeinterface_jobs(n_jobs=2, pool_engine="thread"):
        assert _blas_sizes() == {1}
        threadpool_limits(limits=3)  # a leaked change to every pool, never restored by its maker
        assert _blas_sizes() == {3}
    assert _pool_sizes() == before
    with pytest.raises(RuntimeError, match="boom"):
        with spikeinterface_jobs(n_jobs=2):
            threadpool_limits(limits=3)
            raise RuntimeError("boom")
    assert _pool_sizes() == before


def test_spikeinterface_thread_workers_racing_to_restore_leave_the_blas_thread_count_alone():
    """Two of SpikeInterface's own thread-worker wrappers (each limits BLAS to one thread around
    its chunk) in the order that leaks outside the block: A enters, B enters (saving A's 1 as
    the count to restore), A leaves (restoring the old count), B leaves (restoring 1). The
    default counts are the reference (nothing here holds a limit while the workers run: a thread
    that does holds threadpoolctl's control of OpenBLAS, and the workers' changes are then
    ignored); where BLAS runs one thread by default, a leaked 1 cannot show."""
    import threading

    from spikeinterface.core.job_tools import WorkerFuncWrapper
    a_inside, b_inside, a_done = threading.Event(), threading.Event(), threading.Event()

    def chunk_a(segment_index, start, stop, worker_dict):
        a_inside.set()
        assert b_inside.wait(10)

    def chunk_b(segment_index, start, stop, worker_dict):
        b_inside.set()
        assert a_done.wait(10)

    outside = _pool_sizes()
    with spikeinterface_jobs(n_jobs=2, pool_engine="thread"):
        a = threading.Thread(target=WorkerFuncWrapper(chunk_a, {}, 1), args=((0, 0, 1),))
        b = threading.Thread(target=WorkerFuncWrapper(chunk_b, {}, 1), args=((0, 0, 1),))
        a.start()
        assert a_inside.wait(10)
        b.start()
        a.join(10)
        a_done.set()
        b.join(10)
        assert not a.is_alive() and not b.is_alive()
    assert _pool_sizes() == outside
