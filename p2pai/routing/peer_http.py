"""HTTP/1.1 requests to peers' endpoints on asyncio.Protocol, over pooled keep-alive connections.

aiohttp's client hands a streamed body to a task one chunk at a time (a wake-up
and a read per SSE event); here each piece of the body goes from data_received
straight to the answer's sink, or a relay thread takes the rest of a chunked body
over (detach(), BodyReader), which is what makes relaying a stream cheap for the
entry node. Only what peer requests need: a request with a body (never HEAD); answers
framed by Content-Length, chunked encoding or the end of the connection. The
peer is a p2pai node (aiohttp's server), so parsing is strict only where a
mistake could mix up two answers; an answer larger than the client's limit ends broken.

TLS runs on an ssl.SSLObject over memory BIOs (peer_tls.TLSSession), not on asyncio's SSL
transport: the decryption state then belongs to the connection, and the relay
thread that takes a stream over keeps decrypting with the same object. A
connection is pinned to the peer it was opened for: the server's certificate
must be bound to that peer id (peer_tls.PeerTLS.bound_peer).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import cast
from urllib.parse import urlsplit

from multidict import CIMultiDict

from .answer import MAX_ANSWER_BYTES, Answer, AnswerBroken
from .chunked import ChunkError, Dechunker
from .peer_tls import PeerTLS, TLSSession

MAX_HEAD = 64 * 1024
IDLE_S = 30.0  # an idle connection older than this is closed, not reused (aiohttp servers keep theirs an hour)
MAX_IDLE_PER_PEER = 16
RECV_BYTES = 64 * 1024  # a larger recv() costs a fresh allocation each time: 20 µs against 3 for 190 bytes here


class Unreachable(ConnectionError):
    """No connection to the peer could be made (secured, and to that very peer): the request never left this node."""


class WrongPeer(ConnectionError):
    """The server at a peer's address proved to be another node (or none of the swarm's)."""


class PeerResponse(Answer):
    def __init__(self, connection: _Connection, status: int, headers: CIMultiDict[str], limit: int) -> None:
        super().__init__(status, headers, limit)
        self._connection = connection

    def pause_reading(self) -> None:
        self._connection.pause_reading()

    def resume_reading(self) -> None:
        self._connection.resume_reading()

    def close(self) -> None:
        self._connection.abort()

    def release(self) -> None:
        self._connection.release()

    def detach(self) -> BodyReader | None:
        return self._connection.detach()


class _TLSSocket:
    """A relay thread's blocking reads through a connection's TLS session.

    Like a plain recv(), one call returns all that arrived: every whole record in the bytes
    received, decrypted and joined (usually one record, one event). Records hold at most
    16 KiB, less than a read asks for, so the session never keeps decrypted data back.
    The bytes received go through a buffer of its own into the session: a fresh 64 KiB object
    per read cost about 5 µs of the 60 a relayed TLS event costs here.
    """

    def __init__(self, sock: socket.socket, tls: TLSSession) -> None:
        self._sock = sock
        self._tls = tls
        self._buffer = memoryview(bytearray(RECV_BYTES))

    def recv(self, size: int) -> bytes:
        incoming, session, outgoing = self._tls.incoming, self._tls.session, self._tls.outgoing
        data = b""
        while True:
            if not incoming.pending:
                if data:
                    break
                received = self._sock.recv_into(self._buffer)
                if not received:
                    return b""
                incoming.write(self._buffer[:received])
            try:
                data += session.read(size)
            except ssl.SSLWantReadError:  # a partial record, now inside the session
                if data:
                    break
            except ssl.SSLZeroReturnError:  # close_notify: this data, then the end
                break
        if outgoing.pending:  # the session's own messages (a key update's answer)
            self._sock.sendall(outgoing.read())
        return data


class BodyReader:
    """The rest of a chunked answer, read off the connection's socket with blocking calls by one thread.

    The thread reads a duplicate of the socket in blocking mode (through the connection's TLS
    session if it has one). That mode is a flag the duplicate shares with the event loop's
    descriptor, so close() restores it before the connection can serve the event loop again;
    settle() then hands the connection back.
    """

    def __init__(self, sock: socket.socket, recv: Callable[[int], bytes], dechunker: Dechunker, pending: bytes,
                 left: int, settled: Callable[[BodyReader, AnswerBroken | None], None]) -> None:
        self._sock = sock
        self._recv = recv
        self._dechunker = dechunker
        self._pending = pending
        self._left = left  # bytes the answer may still bring before it is too large
        self._settled = settled
        self.complete = False  # the body ended and nothing followed it: the connection can be reused
        self.stopped = False  # set from the event loop: stop waiting, the answer is being closed

    # On the reading thread

    def pieces(self) -> Iterator[tuple[bytes, bytes]]:
        """The body's data as it arrives, until its end; AnswerBroken if it breaks off.

        Each piece comes with the bytes it arrived as when they were exactly one whole chunk
        (else b""): the relay can send those on as they are, which halves its Python work per event.
        """
        if self._pending:
            yield self._pending, b""
        recv, whole = self._recv, self._dechunker.whole
        while True:
            try:
                data = recv(RECV_BYTES)
            except OSError as exc:  # ssl.SSLError included
                raise AnswerBroken(f"the connection was lost ({exc!r})") from exc
            self._left -= len(data)
            if self._left < 0:
                raise AnswerBroken("the answer exceeded its size limit")
            payload = whole(data)
            if payload is not None:
                yield payload, data
                continue
            if not data:
                raise AnswerBroken("the connection was closed" if self.stopped else "the peer closed the connection")
            try:
                payload, rest = self._dechunker.feed(data)
            except ChunkError as exc:
                raise AnswerBroken(f"the peer sent {exc}") from exc
            if payload:
                yield payload, b""
            if rest is not None:
                self.complete = not rest
                return

    def close(self) -> None:
        """Give the socket back to the event loop's care: non-blocking again (settle() closes the duplicate)."""
        self._sock.setblocking(False)

    # On the event loop

    def wake(self) -> None:
        """Wake the thread blocked reading: the connection is shut down under it."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already disconnected, or settled and closed

    def settle(self, error: AnswerBroken | None) -> None:
        """After close(): the answer ends (broken if ``error``); a complete one's connection may serve
        another request. The duplicate is closed here, on the event loop, so that wake() never meets a
        descriptor the thread has just closed (and the system has given to another connection)."""
        self._sock.close()
        self._settled(self, error)


class _Connection(asyncio.Protocol):
    """One connection to a peer: one request at a time, then back to the pool if the answer was complete."""

    def __init__(self, pool: PeerClient, key: _Key, tls: ssl.SSLContext | None) -> None:
        self._pool = pool
        self.key = key
        self._tls = TLSSession(tls) if tls is not None else None
        self._handshaken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._handshaken.add_done_callback(_retrieved)  # a handshake given up on may still fail later
        self._paused = False
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[PeerResponse] | None = None
        self._response: PeerResponse | None = None
        self._head = b""
        self._body = self._unexpected
        self._left = 0  # bytes of a Content-Length body still to come
        self._dechunker = Dechunker()
        self._keep_alive = False
        self._reader: BodyReader | None = None  # while a thread reads the body
        self.closed = False
        self.idle_since = 0.0

    # Driven by PeerClient and PeerResponse

    async def handshake(self, peer: str, tls: PeerTLS | None) -> None:
        """Complete the TLS handshake (if any); WrongPeer unless the server is ``peer``."""
        if self._tls is None or tls is None:
            return
        await self._handshaken
        bound = tls.bound_peer(self._tls.peer_certificate())
        if bound != peer:
            raise WrongPeer(f"the server's certificate belongs to {bound or 'no peer'}, not to {peer}")

    async def request(self, message: bytes) -> PeerResponse:
        """Send ``message`` and wait for the answer's status and headers."""
        assert self._transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(self._tls.encrypt(message) if self._tls is not None else message)
        return await self._waiter

    def pause_reading(self) -> None:
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._paused = False
        if self._transport is not None:
            self._transport.resume_reading()
        if self._tls is not None and self._tls.buffered and self._reader is None:
            self._decrypt()  # what arrived while paused

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
        if self._reader is not None:  # wake the thread blocked on the socket
            self._reader.stopped = True
            self._reader.wake()
        if self._transport is not None:
            self._transport.abort()
        self._lost(AnswerBroken("the connection was closed"))

    def detach(self) -> BodyReader | None:
        """Let a thread read the rest of a chunked body off the socket; None if this answer cannot be."""
        transport, response = self._transport, self._response
        if self._body != self._chunked or self.closed or transport is None or response is None:
            return None
        sock = transport.get_extra_info("socket")
        if sock is None or transport.get_write_buffer_size():
            return None
        try:
            duplicate = socket.socket(fileno=os.dup(sock.fileno()))
        except OSError:
            return None  # out of descriptors
        transport.pause_reading()
        duplicate.setblocking(True)
        self._body = self._unexpected
        recv = _TLSSocket(duplicate, self._tls).recv if self._tls is not None else duplicate.recv
        self._reader = BodyReader(duplicate, recv, self._dechunker, response.take_buffered(),
                                  response.limit - response.received, self._reattach)
        return self._reader

    def _reattach(self, reader: BodyReader, error: AnswerBroken | None) -> None:
        self._reader = None
        if self.closed:
            return  # aborted meanwhile: the answer already ended broken
        if error is not None:
            self._fail_with(error)
            return
        assert self._transport is not None and self._response is not None
        self._keep_alive = self._keep_alive and reader.complete and not (self._tls is not None and self._tls.buffered)
        if self._tls is not None and self._tls.outgoing.pending:
            self._transport.write(self._tls.outgoing.read())
        self._paused = False
        self._transport.resume_reading()
        self._response.finish()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._transport is not None:
            return  # uvloop calls it again after create_connection returned (see PeerClient._connect)
        self._transport = cast(asyncio.Transport, transport)  # a stream transport, whatever its class
        if self._tls is not None:
            self._step_handshake()
        else:
            self._handshaken.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._body == self._until_close and exc is None and self._response is not None and self._tls is None:
            self._response.finish()  # over TLS only a close_notify ends such a body (see _decrypt)
        error = AnswerBroken(f"the connection was lost ({exc!r})" if exc else "the peer closed the connection")
        if not self._handshaken.done():
            self._handshaken.set_exception(ConnectionError(str(error)))
        self._lost(error)

    def data_received(self, data: bytes) -> None:
        tls = self._tls
        if tls is None:
            self._received(data)
            return
        tls.incoming.write(data)
        if not self._handshaken.done():
            self._step_handshake()
        if self._handshaken.done() and not self._paused:
            self._decrypt()

    def _step_handshake(self) -> None:
        assert self._tls is not None and self._transport is not None
        try:
            done = self._tls.handshake()
        except ssl.SSLError as exc:  # a failed certificate check included
            self._handshaken.set_exception(exc)
            self._transport.abort()
            return
        if self._tls.outgoing.pending:
            self._transport.write(self._tls.outgoing.read())
        if done:
            self._handshaken.set_result(None)

    def _decrypt(self) -> None:
        """Pass on, as one piece (as a plain connection would), all that the records received hold;
        called with bytes buffered. Stops while paused, and after the peer's close_notify."""
        tls = self._tls
        assert tls is not None
        pieces = []
        ended = False
        while tls.buffered and not self._paused:
            try:
                data = tls.read()
            except ssl.SSLError as exc:
                self._fail_with(AnswerBroken(f"the connection's TLS failed ({exc!r})"))
                return
            if data is None:
                break
            if not data:
                ended = True
                break
            pieces.append(data)
        if pieces:
            self._received(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if ended and not self.closed:  # nothing more comes (and the only clean end of a body framed by the close)
            if self._body == self._until_close and self._response is not None:
                self._response.finish()
            self._fail_with(AnswerBroken("the peer closed the connection"))
            return
        if tls.outgoing.pending and self._transport is not None:
            self._transport.write(tls.outgoing.read())

    def _received(self, data: bytes) -> None:
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
        pairs = []
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon:
                raise ValueError(f"header line {line!r}")
            pairs.append((name.strip(), value.strip()))
        headers: CIMultiDict[str] = CIMultiDict(pairs)  # built at once: add() per header cost more
        connection = headers.get("Connection", "").lower()
        self._keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
        response = self._response = PeerResponse(self, int(status), headers, self._pool.max_answer_bytes)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(response)
        if response.status < 200 or response.status in (204, 304):
            self._end()
        elif "chunked" in headers.get("Transfer-Encoding", "").lower():
            self._body, self._dechunker = self._chunked, Dechunker()
        elif "Content-Length" in headers:
            self._left = int(headers["Content-Length"])
            if not 0 <= self._left <= response.limit:
                raise ValueError(f"Content-Length {self._left} (the size limit is {response.limit})")
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
        assert self._response is not None
        try:
            payload, rest = self._dechunker.feed(data)
        except ChunkError as exc:
            self._fail(str(exc))
            return
        if payload:
            self._response.feed(payload)
        if rest is not None:
            self._end(extra=bool(rest))

    def _unexpected(self, data: bytes) -> None:
        self._fail("bytes after the end of an answer")

    def _end(self, extra: bool = False) -> None:
        assert self._response is not None
        self._body = self._unexpected
        if extra:
            self._keep_alive = False
        self._response.finish()

    def _fail(self, reason: str) -> None:
        self._fail_with(AnswerBroken(f"the peer sent {reason}"))

    def _fail_with(self, error: AnswerBroken) -> None:
        self._keep_alive = False
        if self._transport is not None:
            self._transport.abort()
        self._lost(error)

    def _lost(self, error: AnswerBroken) -> None:
        if not self.closed:
            self.closed = True
            self._pool.forget(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        if self._response is not None:
            self._response.finish(error)


_Key = tuple[str, int, str]  # host, port, and the peer a connection is pinned to


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class PeerClient:
    """Keep-alive connections to peers, reused most recent first.

    With ``tls`` it speaks only https:// and every connection is pinned to the peer it was
    opened for; without (the measurement-only plaintext mode) only http://.
    """

    def __init__(self, connect_timeout: float, tls: PeerTLS | None = None,
                 max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        self._connect_timeout = connect_timeout
        self._tls = tls
        self._context = tls.client_context() if tls is not None else None
        self.scheme = "https" if tls is not None else "http"
        self.max_answer_bytes = max_answer_bytes
        self._idle: dict[_Key, list[_Connection]] = {}

    async def request(self, url: str, method: str, path: str, headers: dict[str, str], body: bytes,
                      peer: str) -> PeerResponse:
        """The answer of ``peer`` at ``url`` to one request, status and headers read; the body
        follows (read() or stream_to()). ValueError for a URL this client does not speak."""
        split = urlsplit(url)
        if split.scheme != self.scheme or split.hostname is None:
            raise ValueError(f"not an {self.scheme}:// URL: {url!r}")
        key = (split.hostname, split.port or (443 if self._tls is not None else 80), peer)
        message = _encode(method, path, split.netloc, headers, body)
        connection = self._take(key)
        if connection is None:
            try:
                connection = await self._connect(key)
            except (OSError, asyncio.TimeoutError) as exc:  # ssl.SSLError and WrongPeer included
                raise Unreachable(f"cannot connect: {exc!r}") from exc
        try:
            return await connection.request(message)
        except BaseException:
            connection.abort()
            raise

    async def _connect(self, key: _Key) -> _Connection:
        loop = asyncio.get_running_loop()
        connection: _Connection | None = None

        async def connect() -> None:
            nonlocal connection
            transport, connection = await loop.create_connection(lambda: _Connection(self, key, self._context),
                                                                 key[0], key[1])
            connection.connection_made(transport)  # uvloop calls it only after create_connection returned
            await connection.handshake(key[2], self._tls)

        try:
            await asyncio.wait_for(connect(), self._connect_timeout)
        except BaseException:
            if connection is not None:
                connection.abort()
            raise
        assert connection is not None
        return connection

    def _take(self, key: _Key) -> _Connection | None:
        idle = self._idle.get(key, [])
        horizon = asyncio.get_running_loop().time() - IDLE_S
        while idle:
            connection = idle.pop()
            if connection.idle_since >= horizon:
                return connection
            connection.abort()
        return None

    def put_back(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= MAX_IDLE_PER_PEER:
            connection.abort()
            return
        connection.idle_since = asyncio.get_running_loop().time()
        idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        """A closed connection leaves the pool (a peer that went away closes its idle ones)."""
        idle = self._idle.get(connection.key, [])
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
