"""The event loop of a node or worker process: uvloop where it is installed, asyncio's own elsewhere.

uvloop runs the loop and its transports' reads and writes in C. Forwarding a small request
cost an entry node about a fifth less CPU with it and took 0.2 ms off the hop (bench/README.md,
issue #12). P2PAI_EVENT_LOOP=asyncio runs asyncio's own loop instead, to measure that.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EVENT_LOOP_ENV = "P2PAI_EVENT_LOOP"


async def wait_set(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set, ``timeout`` seconds at most; whether it is set.

    For the loops of tasks that are stopped by cancelling them: on Python 3.11 and before,
    ``asyncio.wait_for(event.wait(), timeout)`` swallows a cancellation that arrives as the event
    is set (CPython gh-86296), and such a loop then never ends (a node hung on SIGTERM).
    """
    await _within(event.wait(), timeout)
    return event.is_set()


async def wait_get(queue: asyncio.Queue[T], timeout: float) -> T | None:
    """The next item of ``queue``, or None if none came within ``timeout`` seconds.

    ``asyncio.wait_for(queue.get(), timeout)`` without its flaw, as `wait_set`. An item that comes
    as the timeout ends stays in the queue for the next call.
    """
    getter = await _within(queue.get(), timeout)
    return None if getter.cancelled() else getter.result()


async def within(waiting: Coroutine[Any, Any, T], timeout: float) -> T:
    """What ``waiting`` returns, or TimeoutError after ``timeout`` seconds (``waiting`` is then cancelled).

    ``asyncio.wait_for(waiting, timeout)`` without its flaw, as `wait_set`, for a loop stopped by
    cancelling it.
    """
    task = await _within(waiting, timeout)
    if task.cancelled():
        raise asyncio.TimeoutError(f"no answer within {timeout} s")
    return task.result()


async def _within(waiting: Coroutine[Any, Any, T], timeout: float) -> asyncio.Future[T]:
    """Run ``waiting`` for ``timeout`` seconds at most; its task, done, or cancelled and ended.

    asyncio.wait returns on a timeout and raises a cancellation as it comes, whether or not the
    awaited task has just finished: what asyncio.wait_for did not do before Python 3.12. As
    wait_for, it returns (or raises) once a ``waiting`` it cancelled has ended.
    """
    task = asyncio.ensure_future(waiting)
    try:
        await asyncio.wait((task,), timeout=timeout)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
    return task


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to its end on a new event loop, as asyncio.run() does."""
    if os.environ.get(EVENT_LOOP_ENV) != "asyncio":
        try:
            import uvloop
        except ImportError:  # not built for this platform (Windows)
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)

