"""A peer's answer as the router consumes it, whichever way it came (direct HTTP or tunnel).

The body is pushed, not pulled: whoever receives it (the connection's
data_received, the tunnel's pump) hands each piece to a Sink at once. That is
what lets the router relay a stream without a task switch per chunk.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    from .peer_http import BodyReader


MAX_ANSWER_BYTES = 256 * 1024 * 1024
"""A peer's answer (streamed or not) larger than this ends broken: a member cannot fill this node's
memory. Above the largest real answers: 2048 embeddings of 4096 dimensions as JSON are about 170 MB."""


class AnswerBroken(Exception):
    """The answer's body broke off (connection lost, peer closed, tunnel broken, too large)."""


class Sink(Protocol):
    def data(self, payload: bytes) -> None:
        """The next piece of the body; called from the receiving callback, must not block."""

    def end(self, error: AnswerBroken | None) -> None:
        """The body is complete (error None) or broke off; called once."""


class Answer(ABC):
    """Status and headers are known; the body arrives into a buffer until a sink takes it."""

    def __init__(self, status: int, headers: CIMultiDict[str], limit: int = MAX_ANSWER_BYTES) -> None:
        self.status = status
        self.headers = CIMultiDictProxy(headers)
        self.content_type = self.headers.get("Content-Type", "application/octet-stream").split(";")[0].strip()
        self._buffered: list[bytes] = []
        self._sink: Sink | None = None
        self._ended = asyncio.Event()
        self._error: AnswerBroken | None = None
        self.limit = limit
        self.received = 0  # bytes of the body so far

    @property
    def complete(self) -> bool:
        return self._ended.is_set() and self._error is None

    def feed(self, payload: bytes) -> None:
        self.received += len(payload)
        if self.received > self.limit:
            self.finish(AnswerBroken(f"the answer exceeded {self.limit} bytes"))
            self.close()
            return
        if self._sink is not None:
            self._sink.data(payload)
        else:
            self._buffered.append(payload)

    def finish(self, error: AnswerBroken | None = None) -> None:
        if self._ended.is_set():
            return
        self._error = error
        self._ended.set()
        if self._sink is not None:
            self._sink.end(error)

    async def read(self) -> bytes:
        """The whole body; AnswerBroken if it broke off."""
        await self._ended.wait()
        if self._error is not None:
            raise self._error
        return b"".join(self._buffered)

    async def read_at_most(self, limit: int) -> bytes:
        """The whole body, which must not exceed ``limit`` bytes (whatever the headers said, if
        anything: a tunnelled answer has no Content-Length); AnswerBroken if it does."""
        self.limit = min(self.limit, limit)
        if self.received > self.limit:  # it arrived before the limit was set
            self.close()
            raise AnswerBroken(f"the answer exceeded {self.limit} bytes")
        return await self.read()

    def take_buffered(self) -> bytes:
        """What arrived so far and nobody took yet."""
        buffered = b"".join(self._buffered)
        self._buffered.clear()
        return buffered

    def stream_to(self, sink: Sink) -> None:
        """Hand what arrived so far, then every later piece, to ``sink``."""
        if self._buffered:
            sink.data(self.take_buffered())
        if self._ended.is_set():
            sink.end(self._error)
        else:
            self._sink = sink

    def unsink(self) -> None:
        """Buffer later pieces again (until the next stream_to() or take_buffered())."""
        self._sink = None

    @abstractmethod
    def pause_reading(self) -> None: ...

    @abstractmethod
    def resume_reading(self) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Stop receiving at once; the body ends broken unless it was complete."""

    def release(self) -> None:
        """Done with this answer (the connection may serve another request)."""
        self.close()

    def detach(self) -> BodyReader | None:
        """The rest of the body for a thread to read with blocking calls, if this answer allows it."""
        return None
