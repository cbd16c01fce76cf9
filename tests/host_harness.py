"""A model process's core (LlamaHost on its ModelLoop thread) driven in-process from asyncio.

test_batching and the thread-rule test look inside the scheduler (its step
history, waiting and active sequences), which lives in the model's child
process in production; here the same objects run on a thread of the test
process, delivering chunks to asyncio queues instead of the node's socket.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from p2pai.backends.base import GenerationChunk, GenerationRequest, ModelStats
from p2pai.backends.llama import LlamaHost, LlamaSettings
from p2pai.backends.llama.scheduler import Outbox, Scheduler, Sequence
from p2pai.backends.model_loop import ModelLoop


class InProcessModel:
    def __init__(self, loop: ModelLoop, host: LlamaHost, thread: threading.Thread) -> None:
        self._loop = loop
        self.host = host
        self.thread = thread
        self.settings = host.settings
        self.scheduler = host.scheduler

    @classmethod
    async def load(cls, name: str, settings: LlamaSettings) -> InProcessModel:
        loop = ModelLoop()
        thread = threading.Thread(target=loop.run, name=f"model:{name}", daemon=True)
        thread.start()
        events = asyncio.get_running_loop()

        def deliver(outbox: Outbox, scheduler: Scheduler) -> None:
            events.call_soon_threadsafe(_hand_out, outbox)

        host = await _on(loop, lambda: LlamaHost(name, settings, loop, deliver))
        return cls(loop, host, thread)

    async def run(self, call: Callable[[], Any]) -> Any:
        """`call()` on the model's thread, between decode steps."""
        return await _on(self._loop, call)

    async def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        return await self.run(lambda: self.host.embed(inputs))

    def stats(self) -> ModelStats:
        scheduler = self.scheduler
        return ModelStats(loaded=True, in_flight=scheduler.active, queued=scheduler.waiting,
                          slots=len(scheduler.slots), decode_tps=scheduler.decode_tps)

    async def hold(self) -> tuple[threading.Event, asyncio.Future[Any]]:
        """Keep the model's thread busy until the returned gate is set (nothing decodes meanwhile);
        returns once it really holds."""
        gate, holding = threading.Event(), threading.Event()

        def block() -> bool:
            holding.set()
            return gate.wait(10)

        busy = asyncio.ensure_future(self.run(block))
        assert await asyncio.to_thread(holding.wait, 10), "the model's thread never took the call"
        return gate, busy

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        queue: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()
        seq = Sequence(request, queue)
        self.host.submit(seq)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            self.host.cancel(seq)

    async def close(self) -> None:
        await self.run(self.host.close)
        self._loop.stop()
        await asyncio.to_thread(self.thread.join, 5)


def _hand_out(outbox: Outbox) -> None:
    for seq, item in outbox:
        seq.tag.put_nowait(item)


async def _on(loop: ModelLoop, call: Callable[[], Any]) -> Any:
    events = asyncio.get_running_loop()
    future: asyncio.Future[Any] = events.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    def job() -> None:
        try:
            result = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            events.call_soon_threadsafe(settle, None, exc)
        else:
            events.call_soon_threadsafe(settle, result, None)

    loop.post(job)
    return await future
