"""A benchmark-only engine: every token costs a fixed sleep and no compute.

`bench_routing.py` serves a model with it on several nodes to measure how
throughput scales with the number of serving nodes behind one entry node. Real
inference on a 2-core machine would make the nodes compete for the cores and
measure the machine, not the routing; a sleep per token lets N nodes each
deliver their full speed at once, so the only thing that can waste throughput
is the entry node (forwarding cost, uneven placement, queueing).

It implements the Engine interface of `p2pai/backends/base.py` plus the few
attributes the serving layer reads from an engine (`metadata`, `n_ctx`,
`bos_text`, `eos_text`), and reports its load through `stats()` like the llama
engine does, so the router sees in-flight and queued requests.
Nodes are started with it through `bench/slow_node.py`; nothing in p2pai/ knows it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from p2pai.backends.base import (
    GenerationChunk,
    GenerationRequest,
    InvalidRequestError,
    ModelInfo,
    ModelStats,
    QueueFullError,
    Usage,
)

WORDS = ("the", "people", "of", "water", "and", "time", "word", "node", "answer", "world")


@dataclass(frozen=True)
class SlowSettings:
    token_s: float = 0.020
    """Sleep per generated token."""
    slots: int = 1
    """Generations running at once; the rest wait in FIFO order (the llama engine has 1)."""
    n_ctx: int = 4096
    max_queue: int = 64


class SlowEngine:
    """One fake model. Create with `await SlowEngine.load(name, settings)` (the llama engine's signature)."""

    settings = SlowSettings()
    """Class-wide: `slow_node.py` sets it before the node starts."""

    def __init__(self, name: str, settings: SlowSettings) -> None:
        self.name = name
        self._settings = settings
        self.info = ModelInfo(metadata={}, bos_text="<s>", eos_text="</s>", fim=None, n_ctx=settings.n_ctx,
                              n_vocab=32000, slots=settings.slots)
        self._gate = asyncio.Semaphore(settings.slots)
        self.running = 0
        self.waiting = 0

    @classmethod
    async def start(cls, spec: Any, _on_failed: Any = None) -> SlowEngine:
        """Stands in for `ModelProcess.start(ChildSpec, on_failed)`; only the spec's name is used."""
        return cls(spec.name, cls.settings)

    def stats(self) -> ModelStats:
        return ModelStats(
            loaded=True,
            in_flight=self.running,
            queued=self.waiting,
            slots=self._settings.slots,
            decode_tps=1.0 / self._settings.token_s,
        )

    async def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return ([1] if add_special else []) + [hash(word) % 30000 + 3 for word in text.split()]

    async def detokenize(self, tokens: list[int]) -> str:
        return " ".join(WORDS[t % len(WORDS)] for t in tokens)

    async def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        raise InvalidRequestError(f"model {self.name!r} (slow benchmark backend) has no embeddings")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        prompt = request.prompt if isinstance(request.prompt, tuple) else await self.tokenize(request.prompt)
        if self.waiting >= self._settings.max_queue:
            raise QueueFullError(f"model {self.name!r} has {self.waiting} requests waiting")
        room = self.info.n_ctx - len(prompt)
        max_tokens = room if request.max_tokens is None else min(request.max_tokens, room)
        self.waiting += 1
        try:
            await self._gate.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            if max_tokens <= 0:
                yield GenerationChunk(finish_reason="length", usage=Usage(len(prompt), 0))
            # Sleep to absolute deadlines so event-loop jitter does not accumulate.
            start = time.monotonic()
            for produced in range(1, max_tokens + 1):
                delay = start + produced * self._settings.token_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                text = " " + WORDS[produced % len(WORDS)]
                if produced == max_tokens:
                    yield GenerationChunk(text, finish_reason="length", usage=Usage(len(prompt), produced))
                else:
                    yield GenerationChunk(text)
        finally:
            self.running -= 1
            self._gate.release()

    async def close(self) -> None:
        return None
