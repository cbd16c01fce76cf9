"""HTTP/1.1 requests to peers' endpoints on asyncio.Protocol, over pooled keep-alive connections.

aiohttp's client hands a streamed body to a task one chunk at a time (a wake-up
and a read per SSE event); here each piece of the body goes from data_received
straight to the answer's sink, which is what makes relaying a stream cheap for
the entry node. Only what peer requests need: a request with a body (never HEAD); answers
framed by Content-Length, chunked encoding or the end of the connection. The
peer is a p2pai node (aiohttp's server), so parsing is strict only where a
mistake could mix up two answers.
"""

from __future__ import annotations

import asyncio
from typing import cast
from urllib.parse import urlsplit

from multidict import CIMultiDict

from .answer import Answer, AnswerBroken

MAX_HEAD = 64 * 1024
MAX_LINE = 1024  # a chunk-size line
IDLE_S = 30.0  # an idle connection older than this is closed, not reused (aiohttp servers keep theirs an hour)
MAX_IDLE_PER_PEER = 16


class PeerResponse(Answer):
    def __init__(self, connection: _Connection, status: int, headers: CIMultiDict[str]) -> None:
        super().__init__(status, headers)
        self._connection = connection

    def pause_reading(self) -> None:
        self._connection.pause_reading()

    def resume_reading(self) -> None:
        self._connection.resume_reading()

    def close(self) -> None:
        self._connection.abort()

    def release(self) -> None:
        self._connection.release()


class _Connection(asyncio.Protocol):
    """One connection to a peer: one request at a time, then back to the pool if the answer was complete."""

    def __init__(self, pool: PeerClient, address: tuple[str, int]) -> None:
        self._pool = pool
        self.address = address
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[PeerResponse] | None = None
        self._response: PeerResponse | None = None
        self._head = b""
        self._body = self._unexpected
        self._left = 0  # bytes of the body (Content-Length) or of the current chunk still to come
        self._partial = b""  # an incomplete chunk-size line
        self._trailers = False
        self._keep_alive = False
        self.closed = False
        self.idle_since = 0.0

    # Driven by PeerClient and PeerResponse

    async def request(self, message: bytes) -> PeerResponse:
        """Send ``message`` and wait for the answer's status and headers."""
        assert self._transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(message)
        return await self._waiter

    def pause_reading(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def release(self) -> None:
        if self._keep_alive and not self.closed and self._response is not None and self._response.complete:
            self._waiter = self._response = None
            self._body = self._unexpected
            self._pool.put_back(self)
        else:
            self.abort()

    def abort(self) -> None:
        """Close at once; an unfinished answer ends broken now, not when the transport says so."""
        self._keep_alive = False
        if self._transport is not None:
            self._transport.abort()
        self._lost(AnswerBroken("the connection was closed"))

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a stream transport, whatever its class

    def connection_lost(self, exc: Exception | None) -> None:
        if self._body == self._until_close and exc is None and self._response is not None:
            self._response.finish()
        self._lost(AnswerBroken(f"the connection was lost ({exc!r})" if exc else "the peer closed the connection"))

    def data_received(self, data: bytes) -> None:
        if self._response is None:
            data = self._read_head(data)
            if self._response is None:
                return
        if data:
            self._body(data)

    # Parsing

    def _read_head(self, data: bytes) -> bytes:
        if self._waiter is None:
            self._fail("bytes nobody asked for")
            return b""
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD:
                self._fail("an answer's head too large")
            return b""
        head, rest = self._head[:end], self._head[end + 4 :]
        self._head = b""
        try:
            self._start(head)
        except ValueError as exc:
            self._fail(f"a malformed answer head: {exc}")
            return b""
        return rest

    def _start(self, head: bytes) -> None:
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status = status_line.split(" ", 2)[:2]
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise ValueError(f"version {version!r}")
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon:
                raise ValueError(f"header line {line!r}")
            headers.add(name.strip(), value.strip())
        connection = headers.get("Connection", "").lower()
        self._keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
        response = self._response = PeerResponse(self, int(status), headers)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(response)
        if response.status < 200 or response.status in (204, 304):
            self._end()
        elif "chunked" in headers.get("Transfer-Encoding", "").lower():
            self._body, self._left, self._partial, self._trailers = self._chunked, 0, b"", False
        elif "Content-Length" in headers:
            self._left = int(headers["Content-Length"])
            self._body = self._by_length
            if self._left == 0:
                self._end()
        else:
            self._keep_alive = False
            self._body = self._until_close

    def _by_length(self, data: bytes) -> None:
        assert self._response is not None
        if len(data) < self._left:
            self._left -= len(data)
            self._response.feed(data)
            return
        data, extra, self._left = data[: self._left], data[self._left :], 0
        self._response.feed(data)
        self._end(extra=bool(extra))

    def _until_close(self, data: bytes) -> None:
        assert self._response is not None
        self._response.feed(data)

    def _chunked(self, data: bytes) -> None:
        """Pass each chunk's data on, one feed per read: the common read holds whole chunks."""
        assert self._response is not None
        if self._partial:
            data, self._partial = self._partial + data, b""
        pieces = []
        pos, size = 0, len(data)
        while pos < size:
            if self._left:
                end = min(pos + self._left, size)
                pieces.append(data[pos:end])
                self._left -= end - pos
                pos = end
                continue
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                self._partial = data[pos:]
                if len(self._partial) > MAX_LINE:
                    self._fail("a chunk-size line too long")
                    return
                break
            line, pos = data[pos:eol], eol + 2
            if self._trailers:
                if not line:  # the empty line after the last chunk and its trailers
                    self._feed(pieces)
                    self._end(extra=pos < size)
                    return
            elif line:  # an empty line is the end of a chunk's data
                try:
                    self._left = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    self._fail(f"a bad chunk size {line[:40]!r}")
                    return
                if self._left < 0:
                    self._fail("a negative chunk size")
                    return
                self._trailers = self._left == 0
        self._feed(pieces)

    def _feed(self, pieces: list[bytes]) -> None:
        assert self._response is not None
        if pieces:
            self._response.feed(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def _unexpected(self, data: bytes) -> None:
        self._fail("bytes after the end of an answer")

    def _end(self, extra: bool = False) -> None:
        assert self._response is not None
        self._body = self._unexpected
        if extra:
            self._keep_alive = False
        self._response.finish()

    def _fail(self, reason: str) -> None:
        self._keep_alive = False
        if self._transport is not None:
            self._transport.abort()
        self._lost(AnswerBroken(f"the peer sent {reason}"))

    def _lost(self, error: AnswerBroken) -> None:
        if not self.closed:
            self.closed = True
            self._pool.forget(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        if self._response is not None:
            self._response.finish(error)


class PeerClient:
    """Keep-alive connections to peers, reused most recent first."""

    def __init__(self, connect_timeout: float) -> None:
        self._connect_timeout = connect_timeout
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def request(self, url: str, method: str, path: str, headers: dict[str, str], body: bytes) -> PeerResponse:
        """The answer to one request, status and headers read; the body follows (read() or stream_to())."""
        split = urlsplit(url)
        if split.scheme != "http" or split.hostname is None:
            raise ValueError(f"not an http:// URL: {url!r}")
        address = (split.hostname, split.port or 80)
        message = _encode(method, path, split.netloc, headers, body)
        connection = self._take(address) or await self._connect(address)
        try:
            return await connection.request(message)
        except BaseException:
            connection.abort()
            raise

    async def _connect(self, address: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        transport, connection = await asyncio.wait_for(
            loop.create_connection(lambda: _Connection(self, address), *address), self._connect_timeout
        )
        connection.connection_made(transport)  # uvloop calls it only after create_connection returned
        return connection

    def _take(self, address: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(address, [])
        horizon = asyncio.get_running_loop().time() - IDLE_S
        while idle:
            connection = idle.pop()
            if connection.idle_since >= horizon:
                return connection
            connection.abort()
        return None

    def put_back(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.address, [])
        if len(idle) >= MAX_IDLE_PER_PEER:
            connection.abort()
            return
        connection.idle_since = asyncio.get_running_loop().time()
        idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        """A closed connection leaves the pool (a peer that went away closes its idle ones)."""
        idle = self._idle.get(connection.address, [])
        if connection in idle:
            idle.remove(connection)

    def close(self) -> None:
        for idle in list(self._idle.values()):
            for connection in list(idle):
                connection.abort()
        self._idle.clear()


def _encode(method: str, path: str, authority: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {authority}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if any("\r" in line or "\n" in line for line in lines):
        raise ValueError("a line break in the request line or a header")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body
