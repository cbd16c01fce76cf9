"""HTTP requests through the overlay's tunnel, for peers this node cannot connect to.

The tunnelled request is the very request the direct path would send, signature
included, and the receiving node replays it against its own peer endpoint on
loopback: both paths share one authentication and one set of handlers. The
replay connects with this node's own certificate, so the peer endpoint cannot
tell the sender by it: the replay first checks that the request is signed by the
peer the overlay authenticated as the tunnel's other end (libp2p's Noise handshake).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from multidict import CIMultiDict

from ..overlay.tunnel import TunnelBroken
from .answer import Answer, AnswerBroken
from .peer_auth import PEER, SIGNED_HEADERS
from .peer_http import PeerClient

_LENGTH = 4
_ANSWER_HEADERS = ("Content-Type", "Cache-Control", "Retry-After")
_BEHIND = 64  # pieces of an answer waiting for the tunnel before the local connection stops being read

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


def serve_locally(client: PeerClient, local_url: Callable[[], str], node_id: str) -> Tunnel:
    """The overlay's tunnel handler: replay each request on this node's peer endpoint (pinned to
    this node, as every peer connection is to its peer)."""

    async def handle(peer: str, request: bytes) -> AsyncIterator[bytes]:
        head, body = _unframe(request)
        method, path, headers = str(head["method"]), str(head["path"]), head["headers"]
        if not path.startswith("/") or not isinstance(headers, dict):
            raise ValueError("the path must be absolute, the headers an object")
        passed = CIMultiDict((str(name), str(value)) for name, value in headers.items())
        if passed.get(PEER) != peer:
            raise ValueError("the request is not signed by the tunnel's peer")
        # What the forwarder sends, nothing else: no framing header of the peer's reaches the HTTP request.
        headers = {name: passed[name] for name in (*SIGNED_HEADERS, "Content-Type") if name in passed}
        answer = await client.request(local_url(), method, path, headers, body, node_id)
        try:
            kept = {name: answer.headers[name] for name in _ANSWER_HEADERS if name in answer.headers}
            kept.update((k, v) for k, v in answer.headers.items() if k.lower().startswith("x-p2pai-"))
            yield _frame({"status": answer.status, "headers": kept})
            async for piece in _body(answer):
                yield piece
        finally:
            answer.release()  # a complete answer's connection serves the next replay

    return handle


async def _body(answer: Answer) -> AsyncIterator[bytes]:
    """``answer``'s body as it arrives; reading pauses while the tunnel is behind. AnswerBroken if it breaks."""
    arrived: asyncio.Queue[bytes | AnswerBroken | None] = asyncio.Queue()
    paused = False

    class Into:
        def data(self, payload: bytes) -> None:
            nonlocal paused
            arrived.put_nowait(payload)
            if arrived.qsize() >= _BEHIND and not paused:
                paused = True
                answer.pause_reading()

        def end(self, error: AnswerBroken | None) -> None:
            arrived.put_nowait(error)

    answer.stream_to(Into())
    while True:
        item = await arrived.get()
        if paused and arrived.empty():
            paused = False
            answer.resume_reading()
        if item is None:
            return
        if isinstance(item, AnswerBroken):
            raise item
        yield item


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
