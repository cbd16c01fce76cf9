"""Relay a peer's streamed (SSE) answer to the client as each piece arrives.

Two ways, one result. The usual one gives the stream a thread of its own
(StreamThread): blocking reads from the peer's socket (decrypted with the
connection's own TLS session, peer_http._TLSSocket), writes straight to the
client's socket. An event is then one wake-up of that thread, with no
event-loop iteration, selector call or callback between receiving and sending
it: about 0.04 ms of CPU per event against 0.06-0.08 ms for the best event-loop
relay measured on our 2-core machine (issue #4: entry CPU per chunk).

A stream's first pieces (HAND_OVER_AFTER) go through the event loop all the same: LoopRelay
writes every piece to the client's transport from the callback that received it, so a
forwarded event costs one loop iteration and no task switch, and a short answer never
pays for a thread's hand-over. LoopRelay also relays the rest when a thread cannot take
the stream over (a tunnelled answer, bytes still queued for the client, too many streams at once).

Either way a slow client stops the reading from the peer until it catches up.

Each API family ends its stream its own way (streams.py): the relay watches how the last event of
the body begins, so it knows a complete OpenAI, Anthropic or Responses stream alike.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import select
import socket
import threading
from collections.abc import Callable

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from .answer import Answer, AnswerBroken
from .peer_http import BodyReader
from .streams import OPENAI

log = logging.getLogger(__name__)

MAX_THREADS = 64  # streams relayed by threads at once; more go through the event loop
IDLE_THREADS = 4  # threads kept waiting for the next stream
HAND_OVER_AFTER = 16
"""Pieces a stream sends from the event loop before a thread takes it over. Handing a stream to a
thread cost the entry about 0.37 ms of CPU here (duplicated sockets, a thread's wake-up, the
hand-back: a 4-token stream cost 1.9 ms relayed on the loop against 2.3 by a thread), and a thread
saves about 0.03 ms per event: a short answer is cheaper relayed on the loop throughout, a long one
pays the loop's price for its first pieces only (about 0.0003 ms per event of a 2,000-token stream)."""
WAIT_MS = 200  # a thread waiting for a slow client checks this often whether the answer was closed


NEWLINE = ord("\n")


class ClientGone(ConnectionResetError):
    """The client closed its connection while its answer was being relayed."""


async def relay(request: web.Request, writer: AbstractStreamWriter, upstream: Answer, keep: list[bytes] | None = None,
                rewrite: Callable[[bytes], bytes] | None = None, thread: bool = True,
                final: tuple[bytes, ...] = OPENAI.final, thread_after: int = HAND_OVER_AFTER) -> bool:
    """Relay ``upstream``'s body to the client until it ends; True if it ended complete, with an
    event that begins as one of ``final`` does (OpenAI's: [DONE]).

    ``writer`` is the prepared chunked response's; ``keep`` collects the pieces as received,
    ``rewrite`` changes them before they are sent; ``thread`` False keeps the relay on the event
    loop (what happens anyway when a thread cannot take the stream), else a thread takes it over
    after ``thread_after`` pieces (0: at once). A complete answer's
    response is ended here: its last piece and the end of the body leave in one write, so a
    client that stops reading at the last event finds its connection ready for the next request.
    ClientGone if the client left.
    """
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ClientGone("the client went away")
    pieces = Pieces(keep, rewrite, final)
    first = pieces.next(upstream.take_buffered())
    if first:
        await writer.write(first)  # with the headers if they are still waiting (EventStream): one segment
    writer.send_headers()  # the pieces go to the transport or its socket directly, after the headers
    chunked = bool(getattr(writer, "chunked", False))  # not for an HTTP/1.0 client: its body ends at the close
    thread = thread and chunked
    loop_relay = LoopRelay(transport, writer, pieces, chunked)
    complete = await loop_relay.run_first(upstream, thread_after) if thread and thread_after > 0 else None
    if complete is None:  # a thread's turn (None: the loop relayed the first pieces and paused)
        stream_thread = _stream_thread(transport, upstream, pieces) if thread else None
        complete = await stream_thread.run() if stream_thread is not None else await loop_relay.run(upstream)
    if complete:
        await writer.write_eof(pieces.held)
    elif pieces.held:
        await writer.write(pieces.held)
    return complete


def _stream_thread(transport: asyncio.Transport, upstream: Answer, pieces: Pieces) -> StreamThread | None:
    """A thread's relay, if the stream can be taken over: its client's bytes all sent, its socket at hand."""
    client = transport.get_extra_info("socket")
    if StreamThread.running >= MAX_THREADS or transport.get_write_buffer_size() or client is None:
        return None
    if not hasattr(select, "poll"):
        return None  # Windows: no poll(), and sockets are not file descriptors there
    if transport.get_extra_info("sslcontext") is not None:
        return None  # a TLS connection's socket carries records, not the body's bytes
    try:
        duplicate = socket.socket(fileno=os.dup(client.fileno()))
    except OSError:
        return None  # out of descriptors
    reader = upstream.detach()
    if reader is None:
        duplicate.close()
        return None
    return StreamThread(reader, duplicate, pieces)


class Pieces:
    """Each piece of the body as the client gets it: kept as received, rewritten.

    A piece that ends the stream (its last event is a final one) is held back until the body
    ends (see relay()).
    """

    def __init__(self, keep: list[bytes] | None, rewrite: Callable[[bytes], bytes] | None,
                 final: tuple[bytes, ...] = OPENAI.final) -> None:
        self._keep = keep
        self._rewrite = rewrite
        self._final = final
        self._head_length = max(len(head) for head in final)
        self._head = b""  # how the last event of the body so far begins
        self._tail = b""  # the body's last two bytes
        self._seen: bytes | None = None  # taken by plain(), then passed to next()
        self.held = b""

    def next(self, payload: bytes) -> bytes:
        """The body to send now for ``payload`` (not chunk-framed)."""
        if not payload:
            return b""
        if payload is not self._seen:
            self._see(payload)
        self._seen = None
        out = self.held + (self._rewrite(payload) if self._rewrite is not None else payload)
        if self.done:
            self.held, out = out, b""
        else:
            self.held = b""
        return out

    def plain(self, payload: bytes) -> bool:
        """Take ``payload`` if it goes out unchanged and at once (no rewrite, nothing held, not the
        stream's end), so that the bytes it arrived as can be sent; False: pass it to next()."""
        if self._rewrite is not None or self.held or not payload:
            return False
        self._see(payload)
        if self.done:
            self._seen = payload
            return False
        return True

    def _see(self, payload: bytes) -> None:
        if self._keep is not None:
            self._keep.append(payload)
        last = len(payload) - 2
        if last > 0 and self._tail == b"\n\n" and payload.find(b"\n") == last and payload[-1] == NEWLINE:
            # The usual piece: one whole event of one line (OpenAI's data-only events), found with a
            # search for one byte; the general case below joins the piece to the tail and searches it backwards.
            self._head = payload[: self._head_length]
            return
        data = self._tail + payload
        start = data.rfind(b"\n\n", 0, len(data) - 1)  # the start of an event begun in this piece
        if start >= 0:
            self._head = data[start + 2 : start + 2 + self._head_length]
        elif len(self._head) < self._head_length:
            self._head += payload[: self._head_length - len(self._head)]
        self._tail = data[-2:]

    @property
    def done(self) -> bool:
        """The body so far ends with a final event."""
        return self._tail == b"\n\n" and self._head.startswith(self._final)


def _framed(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class _Threads:
    """Daemon threads that wait for the next stream: starting a thread costs 0.1-0.4 ms here,
    which would delay the stream's first event. At most IDLE_THREADS wait; more end."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # waiting for a job and not yet promised one

    def run(self, job: Callable[[], None]) -> None:
        with self._lock:
            waiting = self._idle > 0
            if waiting:
                self._idle -= 1
        if waiting:
            self._jobs.put(job)
        else:
            threading.Thread(target=self._serve, args=(job,), name="p2pai-relay", daemon=True).start()

    def _serve(self, job: Callable[[], None]) -> None:
        while True:
            job()
            with self._lock:
                if self._idle >= IDLE_THREADS:
                    return
                self._idle += 1
            job = self._jobs.get()


class StreamThread:
    """One stream relayed by a thread of its own, from the peer's socket to a duplicate of the client's.

    The client's socket stays non-blocking (its event loop still reads it): a full send
    buffer is waited out with poll(). Abort by closing the answer: the connection shuts its
    socket down, which wakes the thread's blocked read.
    """

    running = 0  # on the event loop's thread only
    threads = _Threads()

    def __init__(self, reader: BodyReader, client: socket.socket, pieces: Pieces) -> None:
        self._reader = reader
        self._client = client
        self._client.setblocking(False)
        self._pieces = pieces

    async def run(self) -> bool:
        loop = asyncio.get_running_loop()
        settled: asyncio.Future[tuple[AnswerBroken | None, bool]] = loop.create_future()
        StreamThread.running += 1
        try:
            self.threads.run(lambda: self._work(loop, settled))
            error, client_gone = await settled
        finally:
            StreamThread.running -= 1
        if client_gone:
            raise ClientGone("the client went away")
        return error is None and self._pieces.done

    def _work(self, loop: asyncio.AbstractEventLoop, settled: asyncio.Future[tuple[AnswerBroken | None, bool]]
              ) -> None:
        error: AnswerBroken | None = None
        client_gone = False
        try:
            for piece, chunk in self._reader.pieces():
                if chunk and self._pieces.plain(piece):
                    self._send(chunk)
                    continue
                out = self._pieces.next(piece)
                if out:
                    self._send(_framed(out))
        except AnswerBroken as exc:
            error = exc
        except OSError:
            error, client_gone = AnswerBroken("the client went away"), True
        except Exception as exc:  # the event loop must hear of the end, whatever happened
            log.exception("relaying a stream failed")
            error = AnswerBroken(f"relaying failed: {exc!r}")
        finally:
            self._reader.close()
            self._client.close()
        try:
            loop.call_soon_threadsafe(self._settle, settled, error, client_gone)
        except RuntimeError:
            pass  # the event loop is closed: the node is shutting down

    def _settle(self, settled: asyncio.Future[tuple[AnswerBroken | None, bool]], error: AnswerBroken | None,
                client_gone: bool) -> None:
        self._reader.settle(error)
        if not settled.done():
            settled.set_result((error, client_gone))

    def _send(self, data: bytes) -> None:
        try:
            sent = self._client.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return  # the usual case: the client's socket had room for the whole event
        view = memoryview(data)[sent:]
        while view:
            try:
                view = view[self._client.send(view) :]
            except BlockingIOError:
                self._wait_writable()

    def _wait_writable(self) -> None:
        poller = select.poll()
        poller.register(self._client, select.POLLOUT)
        while not poller.poll(WAIT_MS):
            if self._reader.stopped:
                raise AnswerBroken("the answer was closed")


class LoopRelay:
    """The answer's sink: writes every piece to the client's transport from the callback that received it.

    The relaying task only wakes when the answer ends or when the client reads too slowly:
    then the peer's connection stops being read until the client's buffer drains.
    """

    def __init__(self, transport: asyncio.Transport, writer: AbstractStreamWriter, pieces: Pieces,
                 chunked: bool) -> None:
        self._transport = transport
        self._writer = writer
        self._frame = _framed if chunked else bytes
        self._high = transport.get_write_buffer_limits()[1]
        self._pieces = pieces
        self._paused = self._ended = self._client_gone = False
        self._error: AnswerBroken | None = None
        self._wake: asyncio.Future[None] | None = None
        self._upstream: Answer | None = None
        self._left: int | None = None  # pieces to send before a hand-over
        self._handing_over = False  # reading from the peer paused for a thread to take over

    async def run(self, upstream: Answer) -> bool:
        """Relay until the answer ends: True if it ended complete (also after run_first())."""
        complete = await self._run(upstream, None)
        assert complete is not None  # only a hand-over stops early
        return complete

    async def run_first(self, upstream: Answer, pieces: int) -> bool | None:
        """As run(), but None once ``pieces`` pieces went out with the stream still going: reading
        from the peer is then paused, and what arrives meanwhile stays in ``upstream`` for whoever
        relays the rest (this relay too: run())."""
        return await self._run(upstream, pieces)

    async def _run(self, upstream: Answer, hand_over_after: int | None) -> bool | None:
        loop = asyncio.get_running_loop()
        self._upstream = upstream
        self._left = hand_over_after
        self._wake = loop.create_future()
        upstream.stream_to(self)
        if self._handing_over and hand_over_after is None:  # taken back after a hand-over that did not happen
            self._handing_over = False
            upstream.resume_reading()
        while not self._ended:
            if self._handing_over:
                upstream.unsink()
                return None
            if self._paused:
                await self._writer.drain()
                self._paused = False
                upstream.resume_reading()
            else:
                await self._wake
                self._wake = loop.create_future()
        if self._handing_over:  # it ended in the same read: its connection may serve the next request
            self._handing_over = False
            upstream.resume_reading()
        if self._client_gone:
            raise ClientGone("the client went away")
        return self._error is None and self._pieces.done

    # Sink

    def data(self, payload: bytes) -> None:
        out = self._pieces.next(payload)
        if not out:
            return
        transport = self._transport
        if transport.is_closing():
            self._client_gone = True
            assert self._upstream is not None
            self._upstream.close()
            return
        transport.write(self._frame(out))
        if transport.get_write_buffer_size() > self._high and not self._paused:
            self._paused = True
            assert self._upstream is not None
            self._upstream.pause_reading()
            self._signal()
        if self._left is not None:
            self._left -= 1
            if self._left <= 0 and not self._paused and not self._handing_over:
                self._handing_over = True
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
