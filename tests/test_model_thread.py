"""The dedicated model thread: one OS thread, FIFO, bounded queue, cancellation."""

import asyncio
import threading
import time

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


class CountingStepper:
    """Has `work` steps to do; records the thread of each."""

    def __init__(self) -> None:
        self.work = 0
        self.threads: set[int] = set()
        self.done = threading.Event()

    def busy(self) -> bool:
        return self.work > 0

    def step(self) -> None:
        self.threads.add(threading.get_ident())
        time.sleep(0.001)
        self.work -= 1
        if not self.work:
            self.done.set()


async def test_a_woken_stepper_runs_on_the_thread_and_calls_interleave() -> None:
    worker = ModelThread("t")
    stepper = CountingStepper()
    worker.attach(stepper)
    caller = await worker.call(threading.get_ident)
    stepper.work = 500
    worker.wake()
    # A call submitted while the stepper is busy runs between two steps, not after all of them.
    assert await worker.call(threading.get_ident) == caller
    assert stepper.work > 0
    assert await asyncio.to_thread(stepper.done.wait, 5)
    assert stepper.threads == {caller}
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
