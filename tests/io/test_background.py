"""Read-ahead iterator and in-order background sink: order, bounded queues, errors surface."""

import threading
import time

import pytest

from neurotrain.io.background import BackgroundSink, prefetch


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetch_keeps_order_and_runs_ahead_in_another_thread(depth):
    seen_threads = set()

    def gen():
        for i in range(20):
            seen_threads.add(threading.current_thread().name)
            yield i

    assert list(prefetch(gen(), depth)) == list(range(20))
    assert (threading.current_thread().name in seen_threads) == (depth == 0)


def test_prefetch_is_bounded():
    produced = []

    def gen():
        for i in range(100):
            produced.append(i)
            yield i

    it = prefetch(gen(), depth=2)
    assert next(it) == 0
    time.sleep(0.2)
    # one item handed out, at most `depth` queued, one more blocked in put()
    assert len(produced) <= 4
    it.close()


def test_prefetch_reraises_producer_error_and_closes_generator():
    closed = []

    def gen():
        try:
            yield 1
            raise OSError("truncated file")
        finally:
            closed.append(True)

    it = prefetch(gen(), depth=2)
    assert next(it) == 1
    with pytest.raises(OSError, match="truncated file"):
        next(it)
    assert closed == [True]


def test_prefetch_early_stop_closes_the_producer():
    closed = []

    def gen():
        try:
            for i in range(10**9):
                yield i
        finally:
            closed.append(True)

    it = prefetch(gen(), depth=2)
    assert next(it) == 0
    it.close()
    assert closed == [True]


@pytest.mark.parametrize("depth", [0, 2])
def test_sink_handles_items_in_order(depth):
    out = []
    sink = BackgroundSink(out.append, depth)
    for i in range(50):
        sink.submit(i)
    sink.close()
    assert out == list(range(50))


def test_sink_failure_surfaces_at_close_and_drops_later_items():
    out = []

    def fn(i):
        if i == 3:
            raise ValueError("disk full")
        out.append(i)

    sink = BackgroundSink(fn, depth=1)
    with pytest.raises(ValueError, match="disk full"):
        for i in range(10):
            sink.submit(i)
            time.sleep(0.01)
        sink.close()
    assert 3 not in out and out[:3] == [0, 1, 2]
