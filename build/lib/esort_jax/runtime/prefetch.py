"""One background reader for training batches and inference chunks.

    with Prefetcher(produce, count, depth=2) as items:
        for item in items:          # produce(0), produce(1), ... in order
            ...

`produce(i)` runs on a daemon thread, at most `depth` items ahead of the consumer (a bounded
queue: double buffering with depth 2). An exception raised by `produce` is handed over and
re-raised in the consumer at the item where it happened. Leaving the `with` block (or
`close()`, or closing a generator that iterates it) stops the thread early. With depth 0
there is no thread: the consumer calls `produce(i)` itself, inline.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

__all__ = ["Prefetcher"]


class Prefetcher:
    """Items produce(0) … produce(count - 1), computed `depth` ahead on a background thread
    (inline when depth is 0); see the module doc."""

    def __init__(self, produce: Callable[[int], Any], count: int, depth: int = 2):
        self._produce = produce
        self._count = count
        self._stop = threading.Event()
        self._thread = None
        if depth > 0:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _put(self, entry) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            for i in range(self._count):
                if self._stop.is_set():
                    return
                self._put((True, self._produce(i)))
        except BaseException as error:  # handed to the consumer, re-raised there
            self._put((False, error))

    def __iter__(self) -> Iterator[Any]:
        if self._thread is None:
            for i in range(self._count):
                yield self._produce(i)
            return
        for _ in range(self._count):
            ok, item = self._queue.get()
            if not ok:
                self.close()
                raise item
            yield item

    def close(self) -> None:
        """Stop the background thread (a no-op when inline or already stopped)."""
        self._stop.set()
        if self._thread is None:
            return
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
