"""Test helper: hold a model thread busy on purpose."""

from __future__ import annotations

import asyncio
import threading

from p2pai.backends.model_thread import ModelThread


async def occupy(worker: ModelThread) -> tuple[threading.Event, asyncio.Future]:
    """Keep the worker's thread busy until the returned gate is set; waits until it really runs.

    It waits for its own job to start, not for `worker.running`: a job that just
    settled its caller's future may still count as running for a moment.
    """
    gate = threading.Event()
    holding = threading.Event()

    def hold() -> bool:
        holding.set()
        return gate.wait(10)

    busy = asyncio.ensure_future(worker.call(hold))
    for _ in range(500):
        if holding.is_set():
            return gate, busy
        await asyncio.sleep(0.01)
    raise AssertionError("the blocking call never started")
