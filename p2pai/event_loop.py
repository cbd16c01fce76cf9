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
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((waiter,), timeout=timeout)
    finally:
        waiter.cancel()
    return event.is_set()


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

