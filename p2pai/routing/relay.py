"""Relay a peer's streamed (SSE) answer to the client as each piece arrives.

The Relay is the answer's sink: it writes every piece, chunk-framed, straight
to the client's transport from the callback that received it, so a forwarded
event costs no task switch (issue #4: entry CPU per chunk). The relaying task
only wakes when the answer ends or when the client reads too slowly: then the
peer's connection stops being read until the client's buffer drains.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from .answer import Answer, AnswerBroken

DONE = b"data: [DONE]\n\n"


class ClientGone(ConnectionResetError):
    """The client closed its connection while its answer was being relayed."""


class Relay:
    def __init__(self, request: web.Request, writer: AbstractStreamWriter, keep: list[bytes] | None = None,
                 rewrite: Callable[[bytes], bytes] | None = None) -> None:
        """``writer`` is the prepared chunked response's; ``keep`` collects the pieces as received,
        ``rewrite`` changes them before they are sent."""
        if request.transport is None:
            raise ClientGone("the client went away")
        self._transport = request.transport
        self._high = self._transport.get_write_buffer_limits()[1]
        self._writer = writer
        self._keep = keep
        self._rewrite = rewrite
        self._tail = b""
        self._paused = self._ended = self._client_gone = False
        self._error: AnswerBroken | None = None
        self._wake: asyncio.Future[None] | None = None
        self._upstream: Answer | None = None

    async def run(self, upstream: Answer) -> bool:
        """Relay until ``upstream`` ends; True if it ended complete with [DONE]. ClientGone if the client left."""
        loop = asyncio.get_running_loop()
        self._upstream = upstream
        self._wake = loop.create_future()
        self._writer.send_headers()  # the pieces go to the transport directly, after the headers
        upstream.stream_to(self)
        while not self._ended:
            if self._paused:
                await self._writer.drain()
                self._paused = False
                upstream.resume_reading()
            else:
                await self._wake
                self._wake = loop.create_future()
        if self._client_gone:
            raise ClientGone("the client went away")
        return self._error is None and self._tail == DONE

    # Sink

    def data(self, payload: bytes) -> None:
        if self._keep is not None:
            self._keep.append(payload)
        self._tail = (self._tail + payload)[-len(DONE) :]
        out = self._rewrite(payload) if self._rewrite is not None else payload
        if not out:
            return
        transport = self._transport
        if transport.is_closing():
            self._client_gone = True
            assert self._upstream is not None
            self._upstream.close()
            return
        transport.write(b"%x\r\n%b\r\n" % (len(out), out))
        if transport.get_write_buffer_size() > self._high and not self._paused:
            self._paused = True
            assert self._upstream is not None
            self._upstream.pause_reading()
            self._signal()

    def end(self, error: AnswerBroken | None) -> None:
        self._error = error
        self._ended = True
        self._signal()

    def _signal(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
