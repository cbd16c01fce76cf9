"""HTTP requests through the overlay's tunnel, for peers this node cannot connect to.

The tunnelled request is the very request the direct path would send, signature
included, and the receiving node replays it against its own peer endpoint on
loopback: both paths share one authentication and one set of handlers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from multidict import CIMultiDict

from ..overlay.tunnel import TunnelBroken
from .answer import Answer, AnswerBroken

_LENGTH = 4
_ANSWER_HEADERS = ("Content-Type", "Cache-Control", "Retry-After")

Tunnel = Callable[[str, bytes], AsyncIterator[bytes]]


def _frame(head: dict[str, Any], rest: bytes = b"") -> bytes:
    encoded = json.dumps(head).encode()
    return len(encoded).to_bytes(_LENGTH, "big") + encoded + rest


def _unframe(data: bytes) -> tuple[dict[str, Any], bytes]:
    length = int.from_bytes(data[:_LENGTH], "big")
    head = json.loads(data[_LENGTH : _LENGTH + length])
    if not isinstance(head, dict):
        raise ValueError("the head is not an object")
    return head, data[_LENGTH + length :]


def encode_request(method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    return _frame({"method": method, "path": path, "headers": headers}, body)


def serve_locally(session: Callable[[], aiohttp.ClientSession], local_url: Callable[[], str]) -> Tunnel:
    """The overlay's tunnel handler: replay each request on this node's peer endpoint."""

    async def handle(peer: str, request: bytes) -> AsyncIterator[bytes]:
        head, body = _unframe(request)
        method, path, headers = str(head["method"]), str(head["path"]), dict(head["headers"])
        if not path.startswith("/"):
            raise ValueError("the path must be absolute")
        async with session().request(method, local_url() + path, data=body, headers=headers) as response:
            kept = {name: response.headers[name] for name in _ANSWER_HEADERS if name in response.headers}
            kept.update((k, v) for k, v in response.headers.items() if k.lower().startswith("x-p2pai-"))
            yield _frame({"status": response.status, "headers": kept})
            async for chunk in response.content.iter_any():
                yield chunk

    return handle


class TunnelResponse(Answer):
    """A peer's answer through the tunnel; a broken or closed tunnel ends it broken.

    A task pumps the answer into the sink so that close() can stop it at any
    time, even while the tunnel waits for the next chunk.
    """

    def __init__(self, status: int, headers: dict[str, str], chunks: AsyncIterator[bytes]) -> None:
        super().__init__(status, CIMultiDict(headers))
        self._reading = asyncio.Event()
        self._reading.set()
        self._pump = asyncio.ensure_future(self._pump_from(chunks))

    @classmethod
    async def open(cls, chunks: AsyncIterator[bytes]) -> TunnelResponse:
        """Wait for the answer's status and headers."""
        head, rest = _unframe(await anext(chunks))
        if rest:
            raise ValueError("unexpected bytes after the answer's head")
        return cls(int(head["status"]), {str(k): str(v) for k, v in head["headers"].items()}, chunks)

    async def _pump_from(self, chunks: AsyncIterator[bytes]) -> None:
        try:
            async for chunk in chunks:
                self.feed(chunk)
                await self._reading.wait()
            self.finish()
        except TunnelBroken as exc:
            self.finish(AnswerBroken(f"the tunnel broke: {exc}"))
        finally:
            self.finish(AnswerBroken("the tunnel was closed"))  # nothing if it already ended

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def close(self) -> None:
        self._pump.cancel()
        self.finish(AnswerBroken("the tunnel was closed"))
