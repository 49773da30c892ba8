"""The background prefetcher shared by training and inference."""

import threading

import pytest

from esort_jax.runtime.prefetch import Prefetcher


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_items_in_order_and_errors_reach_the_consumer(depth):
    with Prefetcher(lambda i: i * i, 5, depth=depth) as items:
        assert list(items) == [0, 1, 4, 9, 16]

    def broken(i):
        if i == 2:
            raise RuntimeError("read failed")
        return i

    seen = []
    with pytest.raises(RuntimeError, match="read failed"):
        for item in Prefetcher(broken, 5, depth=depth):
            seen.append(item)
    assert seen == [0, 1]


def test_inline_reads_on_the_consumer_thread_and_threads_stop_early():
    callers = []
    assert list(Prefetcher(lambda i: callers.append(threading.current_thread()), 2, depth=0)) == [None, None]
    assert callers == [threading.current_thread()] * 2
    produced = []
    reader = Prefetcher(lambda i: produced.append(i) or i, 1000, depth=2)
    with reader as items:
        assert next(iter(items)) == 0
    assert not reader._thread.is_alive() and len(produced) < 10
