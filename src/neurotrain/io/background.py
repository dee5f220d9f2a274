"""Overlap file I/O with device work: a read-ahead iterator and an in-order background sink.

Reading and writing compressed files is CPU work (zlib, NumPy) that releases the GIL, so
one thread per direction hides it behind the GPU: while the device runs batch ``k``, the
reader prepares batch ``k + 1`` and the writer compresses batch ``k - 1``. Both queues are
bounded (``depth`` items), so memory stays flat, and an exception raised in the background
thread is re-raised in the caller at the next hand-over, never lost.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` in a background thread, up to ``depth`` items ahead of the consumer.

    ``depth <= 0`` iterates in the caller's thread (no overlap). Stopping early (``close()``
    on the returned generator, or dropping it) stops the producer after its current item.
    """
    if depth <= 0:
        yield from items
        return
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(obj: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(items)
        try:
            for obj in it:
                if not put(obj):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(_Failure(exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # a generator's finally-blocks (open files) run in this thread

    th = threading.Thread(target=produce, name="prefetch", daemon=True)
    th.start()
    try:
        while True:
            obj = q.get()
            if obj is _DONE:
                return
            if isinstance(obj, _Failure):
                raise obj.exc
            yield obj
    finally:
        stop.set()
        th.join()


class BackgroundSink(Generic[T]):
    """Call ``fn(item)`` for every submitted item, in order, in one background thread.

    :meth:`submit` blocks when ``depth`` items are waiting; :meth:`close` waits for the queue
    to drain. A failure of ``fn`` is re-raised by the next :meth:`submit` or :meth:`close`;
    items after a failure are dropped. ``depth <= 0`` calls ``fn`` synchronously.
    """

    def __init__(self, fn: Callable[[T], None], depth: int = 2) -> None:
        self.fn = fn
        self.depth = depth
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._q: queue.Queue[Any] = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._consume, name="sink", daemon=True)
            self._thread.start()

    def _consume(self) -> None:
        while True:
            obj = self._q.get()
            if obj is _DONE:
                return
            if self._error is None:
                try:
                    self.fn(obj)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                    self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc

    def submit(self, item: T) -> None:
        self._raise()
        if self._thread is None:
            self.fn(item)
        else:
            self._q.put(item)

    def close(self) -> None:
        """Wait until every submitted item is handled; re-raise a failure."""
        if self._thread is not None:
            self._q.put(_DONE)
            self._thread.join()
            self._thread = None
        self._raise()
