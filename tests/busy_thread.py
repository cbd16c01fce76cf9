"""Test helper: hold a model thread busy on purpose."""

from __future__ import annotations

import asyncio
import threading

from p2pai.backends.model_thread import ModelThread


async def occupy(worker: ModelThread) -> tuple[threading.Event, asyncio.Future]:
    """Keep the worker's thread busy until the returned gate is set; waits until it really runs."""
    gate = threading.Event()
    busy = asyncio.ensure_future(worker.call(gate.wait, 10))
    for _ in range(500):
        if worker.running:
            return gate, busy
        await asyncio.sleep(0.01)
    raise AssertionError("the blocking call never started")
