"""The dedicated model thread: one OS thread, FIFO, bounded queue, cancellation."""

import asyncio
import threading

import pytest

from p2pai.backends.base import QueueFullError
from p2pai.backends.model_thread import ModelThread
from busy_thread import occupy


async def test_every_call_runs_on_the_same_thread_in_order() -> None:
    worker = ModelThread("t")
    seen: list[tuple[int, int]] = []

    def record(i: int) -> int:
        seen.append((i, threading.get_ident()))
        return i * 2

    results = await asyncio.gather(*(worker.call(record, i) for i in range(20)))
    assert results == [i * 2 for i in range(20)]
    assert [i for i, _ in seen] == list(range(20))
    assert len({ident for _, ident in seen}) == 1
    assert seen[0][1] != threading.get_ident()
    worker.stop()


async def test_exception_reaches_the_caller() -> None:
    worker = ModelThread("t")

    def boom() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await worker.call(boom)
    assert await worker.call(lambda: 1) == 1
    worker.stop()


async def test_queue_is_bounded() -> None:
    worker = ModelThread("t", max_pending=2)
    gate, running = await occupy(worker)
    waiting = [asyncio.ensure_future(worker.call(lambda: 1)) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFullError):
        await worker.call(lambda: 1)
    gate.set()
    assert await running is True
    assert await asyncio.gather(*waiting) == [1, 1]
    worker.stop()


async def test_closing_a_stream_stops_its_producer() -> None:
    worker = ModelThread("t")
    produced = []
    stopped = threading.Event()

    def producer(emit, cancelled: threading.Event) -> None:
        for i in range(10_000):
            if cancelled.wait(0.001):
                stopped.set()
                return
            produced.append(i)
            emit(i)

    stream = worker.stream(producer)
    received = [await anext(stream) for _ in range(3)]
    await stream.aclose()
    assert received == [0, 1, 2]
    assert await asyncio.to_thread(stopped.wait, 5)
    assert len(produced) < 10_000
    worker.stop()


async def test_a_cancelled_job_that_has_not_started_never_runs() -> None:
    worker = ModelThread("t")
    gate = threading.Event()
    ran = []
    blocker = asyncio.ensure_future(worker.call(gate.wait, 10))
    queued = asyncio.ensure_future(worker.call(ran.append, 1))
    await asyncio.sleep(0.05)
    queued.cancel()
    await asyncio.sleep(0.01)
    gate.set()
    await blocker
    await worker.call(lambda: None)
    assert ran == []
    worker.stop()


async def test_stream_errors_reach_the_consumer() -> None:
    worker = ModelThread("t")

    def producer(emit, cancelled) -> None:
        emit("a")
        raise RuntimeError("mid-stream")

    items = []
    with pytest.raises(RuntimeError, match="mid-stream"):
        async for item in worker.stream(producer):
            items.append(item)
    assert items == ["a"]
    worker.stop()


async def test_cancelled_waiting_jobs_free_their_queue_place_at_once() -> None:
    worker = ModelThread("t", max_pending=1)
    gate, blocker = await occupy(worker)
    waiting = asyncio.ensure_future(worker.call(lambda: 1))
    await asyncio.sleep(0.01)
    assert worker.pending == 1
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert worker.pending == 0
    replacement = asyncio.ensure_future(worker.call(lambda: 2))
    await asyncio.sleep(0.01)
    # The queue is full again, yet housekeeping (freeing the model) is never refused.
    housekeeping = asyncio.ensure_future(worker.call(lambda: 3, bounded=False))
    gate.set()
    assert await replacement == 2
    assert await housekeeping == 3
    await blocker
    assert worker.pending == 0 and worker.running == 0
    worker.stop()
