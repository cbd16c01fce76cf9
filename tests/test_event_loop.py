"""Which event loop a node or worker process runs on (p2pai.event_loop)."""

from __future__ import annotations

import asyncio

import pytest

from p2pai import event_loop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_processes_run_on_uvloop_where_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.delenv(event_loop.EVENT_LOOP_ENV, raising=False)
    assert event_loop.run(_loop_module()).startswith("uvloop")


def test_asyncio_own_loop_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, "asyncio")
    assert event_loop.run(_loop_module()).startswith("asyncio")


async def test_wait_set_answers_whether_the_event_came() -> None:
    event = asyncio.Event()
    assert not await event_loop.wait_set(event, 0.01)
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await event_loop.wait_set(event, 5)


async def test_wait_set_never_swallows_a_cancellation_that_comes_with_the_event() -> None:
    """A task stopped by cancelling it while its event was just set must end (a node hung on SIGTERM
    when asyncio.wait_for, on Python 3.11 and before, swallowed that cancellation)."""
    event = asyncio.Event()
    waiting = asyncio.create_task(event_loop.wait_set(event, 10))
    await asyncio.sleep(0)
    event.set()
    await asyncio.sleep(0)  # the event's waiter is done; the task is woken but has not run yet
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_wait_get_answers_the_next_item_or_none() -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    assert await event_loop.wait_get(queue, 0.01) is None
    asyncio.get_running_loop().call_later(0.01, queue.put_nowait, "item")
    assert await event_loop.wait_get(queue, 5) == "item"
    assert queue.empty()


async def test_wait_get_never_swallows_a_cancellation_that_comes_with_the_item() -> None:
    """The overlay runner's report loop waits on its event queue and is stopped by cancelling it
    (SIGTERM); asyncio.wait_for swallowed such a cancellation on Python 3.11 and before."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    waiting = asyncio.create_task(event_loop.wait_get(queue, 10))
    await asyncio.sleep(0)
    queue.put_nowait("item")
    await asyncio.sleep(0)  # the getter takes the item and ends
    await asyncio.sleep(0)  # the task is woken but has not run yet
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def _answer(after: float) -> str:
    await asyncio.sleep(after)
    return "answer"


async def test_within_answers_the_result_or_times_out() -> None:
    assert await event_loop.within(_answer(0), 5) == "answer"
    with pytest.raises(asyncio.TimeoutError):
        await event_loop.within(_answer(10), 0.01)


async def test_within_never_swallows_a_cancellation_that_comes_with_the_result() -> None:
    """A pull's chunk loop reads each chunk with a timeout and is stopped by cancelling it."""
    answered = asyncio.Event()

    async def answer() -> str:
        await answered.wait()
        return "chunk"

    waiting = asyncio.create_task(event_loop.within(answer(), 10))
    await asyncio.sleep(0)
    answered.set()
    await asyncio.sleep(0)  # the answer's task ends
    await asyncio.sleep(0)  # the task is woken but has not run yet
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
