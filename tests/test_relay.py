"""The entry's relay of a streamed answer, in-process over loopback.

A "peer" aiohttp app answers; an "entry" app forwards to it with PeerClient and
relays with relay(), as the router does; clients read from the entry. Every
entry test runs both ways of relaying: by a thread per stream, and on the event loop;
and every test runs with the peer behind TLS (its PeerSite, the client pinned to
its peer id) and plain (the measurement-only mode).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from p2pai.api.peer_site import PeerSite, RefusalLog
from p2pai.event_stream import DONE
from p2pai.identity import Identity
from p2pai.routing.answer import AnswerBroken
from p2pai.routing.chunked import Dechunker
from p2pai.routing.peer_http import PeerClient, PeerResponse
from p2pai.routing.peer_tls import PeerTLS
from p2pai.routing.relay import HAND_OVER_AFTER, IDLE_THREADS, ClientGone, StreamThread, relay

HOST = "127.0.0.1"
ONE_READ = 256 * 1024
"""The most an asyncio socket transport reads in one callback."""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Side:
    """How the entry reaches the peer in this run."""

    peer: PeerTLS | None  # None: plain http://
    entry: PeerTLS | None

    @property
    def peer_id(self) -> str:
        return self.peer.peer_id if self.peer is not None else "PlainPeer"

    @property
    def scheme(self) -> str:
        return "https" if self.peer is not None else "http"

    def direct(self) -> aiohttp.ClientSession:
        """A client session that can ask the peer directly (with the entry's certificate)."""
        context = self.entry.client_context() if self.entry is not None else False
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> tuple[PeerTLS, PeerTLS]:
    """The peer's and the entry's TLS, two members of one swarm."""
    seed, directory = os.urandom(32), tmp_path_factory.mktemp("tls")
    return (PeerTLS.load_or_create(directory / "peer", seed, Identity.generate()),
            PeerTLS.load_or_create(directory / "entry", seed, Identity.generate()))


@pytest.fixture(params=["tls", "plain"])
def side(request: pytest.FixtureRequest, members: tuple[PeerTLS, PeerTLS]) -> Side:
    return Side(*members) if request.param == "tls" else Side(None, None)


async def serve(handler: Handler, cancel_handlers: bool = True, side: Side | None = None
                ) -> tuple[str, web.AppRunner]:
    """An app answering every POST with ``handler``: the entry (plain TCPSite), or with ``side``
    the peer (behind a PeerSite, as the peer endpoint is)."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, handler_cancellation=cancel_handlers, access_log=None)
    await runner.setup()
    if side is None:
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        return f"http://{HOST}:{site._server.sockets[0].getsockname()[1]}", runner  # type: ignore[union-attr]
    tls = side.peer.server_context() if side.peer is not None else None
    peer_site = PeerSite(runner, HOST, 0, tls, RefusalLog(logging.getLogger(__name__)))
    await peer_site.start()
    return f"{side.scheme}://{HOST}:{peer_site.port}", runner


@dataclass
class Entry:
    """What the entry app saw: the relay outcomes, what it kept, the client transports."""

    url: str = ""
    outcomes: list[bool | str] = field(default_factory=list)
    kept: list[bytes] = field(default_factory=list)
    requests: list[web.Request] = field(default_factory=list)
    upstreams: list[PeerResponse] = field(default_factory=list)


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler, cancel_handlers: bool = True, side: Side | None = None) -> str:
        url, runner = await serve(handler, cancel_handlers, side)
        runners.append(runner)
        return url

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture(params=[True, False], ids=["thread", "loop"])
def threaded(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
async def peer_client(side: Side) -> AsyncIterator[PeerClient]:
    client = PeerClient(connect_timeout=3.0, tls=side.entry)
    yield client
    client.close()


async def start_entry(servers, client: PeerClient, peer_id: str, peer_url: str, threaded: bool,
                      cancel_handlers: bool = True, rewrite: Callable[[bytes], bytes] | None = None,
                      thread_after: int = 0) -> Entry:
    """``threaded``: a thread takes each stream over after ``thread_after`` pieces (0: at once)."""
    entry = Entry()

    async def forward(request: web.Request) -> web.StreamResponse:
        entry.requests.append(request)
        upstream = await client.request(peer_url, "POST", request.path_qs, {}, await request.read(), peer_id)
        entry.upstreams.append(upstream)
        try:
            response = web.StreamResponse(status=upstream.status,
                                          headers={"Content-Type": upstream.headers["Content-Type"]})
            writer = await response.prepare(request)
            assert writer is not None
            try:
                entry.outcomes.append(await relay(request, writer, upstream, keep=entry.kept, rewrite=rewrite,
                                                   thread=threaded, thread_after=thread_after))
            except ClientGone:
                entry.outcomes.append("client gone")
                raise
            await response.write_eof()
            return response
        finally:
            upstream.release()

    entry.url = await servers(forward, cancel_handlers)
    return entry


def sse_answer(events: list[bytes], pause: float = 0.0) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(event)
            await asyncio.sleep(pause)
        await response.write_eof()
        return response

    return answer


@pytest.mark.parametrize("thread_after", [0, HAND_OVER_AFTER], ids=["at-once", "handed-over"])
async def test_a_relayed_stream_is_byte_identical_to_the_direct_one_and_reuses_the_connection(
        servers, peer_client: PeerClient, side: Side, threaded: bool, thread_after: int) -> None:
    events = [b"data: {\"n\": %d, \"text\": \"\xc3\xa9t\xc3\xa9\"}\n\n" % i for i in range(300)]
    events[100] = b"data: " + b"x" * 300_000 + b"\n\n"  # larger than any single read
    events.append(DONE)
    peers: list[object] = []
    answer = sse_answer(events)

    async def peer(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        return await answer(request)

    peer_url = await servers(side=side, handler=peer)
    entry = await start_entry(servers, peer_client, side.peer_id, peer_url, threaded, thread_after=thread_after)
    async with side.direct() as direct_session, direct_session.post(peer_url + "/v1/completions", data=b"{}") as direct:
        expected = await direct.read()
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.post(entry.url + "/v1/completions", data=b"{}") as routed:
                assert routed.headers["Content-Type"] == "text/event-stream"
                assert await routed.read() == expected
    assert expected == b"".join(events)
    assert entry.outcomes == [True, True]
    assert b"".join(entry.kept) == expected * 2
    assert peers[1] == peers[2]  # the second relayed request reused the first one's connection


async def test_a_client_that_stops_reading_at_done_keeps_its_connection(servers, peer_client: PeerClient, side: Side,
                                                                       threaded: bool) -> None:
    events = [b"data: {\"n\": %d}\n\n" % i for i in range(5)] + [DONE]
    peer_url = await servers(side=side, handler=sse_answer(events))
    entry = await start_entry(servers, peer_client, side.peer_id, peer_url, threaded)
    connections = []

    async def connecting(session: object, context: object, params: object) -> None:
        connections.append(params)

    tracing = aiohttp.TraceConfig()
    tracing.on_connection_create_start.append(connecting)
    async with aiohttp.ClientSession(trace_configs=[tracing]) as session:
        for _ in range(10):
            async with session.post(entry.url + "/v1/completions", data=b"{}") as routed:
                while await routed.content.readuntil(b"\n\n") != DONE:  # and no further: like many SSE clients
                    pass
    assert len(connections) == 1  # the end of the body came with [DONE]
    assert entry.outcomes == [True] * 10


async def test_a_short_stream_stays_on_the_loop_and_a_long_one_is_handed_to_a_thread(
        servers, peer_client: PeerClient, side: Side) -> None:
    """The peer sends each event only once the client has it: every event is a piece of its own."""
    events = [b"data: {\"n\": %d}\n\n" % i for i in range(HAND_OVER_AFTER + 4)] + [DONE]
    received = asyncio.Queue[None]()

    async def lock_step(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(event)
            if event != DONE:
                await asyncio.wait_for(received.get(), 5.0)
        await response.write_eof()
        return response

    peer_url = await servers(side=side, handler=lock_step)
    entry = await start_entry(servers, peer_client, side.peer_id, peer_url, threaded=True,
                              thread_after=HAND_OVER_AFTER)
    running = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for _ in range(2):
            async with session.post(entry.url + "/v1/completions", data=b"{}") as routed:
                body = b""
                while not body.endswith(DONE):
                    body += await asyncio.wait_for(routed.content.readuntil(b"\n\n"), 5.0)
                    running.append(StreamThread.running)
                    received.put_nowait(None)
                assert body == b"".join(events)
    # The first event may come with the answer's head, before the loop relay counts pieces: the
    # hand-over follows the 16th or 17th event, and every later one goes through the thread.
    assert running[: HAND_OVER_AFTER - 1] == [0] * (HAND_OVER_AFTER - 1)
    assert running[HAND_OVER_AFTER + 1 : len(events) - 1] == [1] * 3
    assert entry.outcomes == [True, True]
    assert entry.upstreams[0]._connection is entry.upstreams[1]._connection  # given back after the thread


async def test_a_stream_that_ends_as_it_is_handed_over_leaves_its_connection_ready(
        servers, peer_client: PeerClient, side: Side) -> None:
    """Its last piece and the end of the body arrive in one read, the one that would hand it to a
    thread: the relay ends on the loop, and the peer connection reads again for the next request."""
    events = [b"data: {\"n\": %d}\n\n" % i for i in range(HAND_OVER_AFTER + 1)]  # no [DONE]: never held back
    received = asyncio.Queue[None]()

    async def lock_step(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events[:-1]:
            await response.write(event)
            await asyncio.wait_for(received.get(), 5.0)
        await response.write_eof(events[-1])  # with the end of the body
        return response

    peer_url = await servers(side=side, handler=lock_step)
    entry = await start_entry(servers, peer_client, side.peer_id, peer_url, threaded=True,
                              thread_after=HAND_OVER_AFTER)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for _ in range(2):
            async with session.post(entry.url + "/v1/completions", data=b"{}") as routed:
                body = b""
                while len(body) < len(b"".join(events)):
                    body += await asyncio.wait_for(routed.content.readuntil(b"\n\n"), 5.0)
                    received.put_nowait(None)
                assert body == b"".join(events)
                assert await asyncio.wait_for(routed.read(), 5.0) == b""
    assert entry.outcomes == [False, False]  # complete bodies, but without OpenAI's final event
    assert entry.upstreams[0]._connection is entry.upstreams[1]._connection


async def test_a_failing_rewrite_ends_the_stream_broken(servers, peer_client: PeerClient, side: Side,
                                                       threaded: bool) -> None:
    events = [b"data: {\"n\": %d}\n\n" % i for i in range(50)] + [DONE]

    def rewrite(piece: bytes) -> bytes:
        if b"\"n\": 3}" in piece:
            raise ValueError("a malformed event")
        return piece

    peer_url = await servers(side=side, handler=sse_answer(events, pause=0.005))
    entry = await start_entry(servers, peer_client, side.peer_id, peer_url, threaded,
                              rewrite=rewrite)
    async with aiohttp.ClientSession() as session, session.post(entry.url + "/v1/completions", data=b"{}") as routed:
        body = await asyncio.wait_for(routed.content.read(), 5.0)
    assert body.startswith(b"data: {\"n\": 0}") and DONE not in body
    assert entry.outcomes == [False] and entry.upstreams[0]._connection.closed


async def test_an_http_1_0_client_gets_the_stream_unframed_until_the_close(servers, peer_client: PeerClient, side: Side,
                                                                           threaded: bool) -> None:
    events = [b"data: {\"n\": %d}\n\n" % i for i in range(50)] + [DONE]
    peer_url = await servers(side=side, handler=sse_answer(events))
    entry = await start_entry(servers, peer_client, side.peer_id, peer_url, threaded)
    port = int(entry.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"POST /v1/completions HTTP/1.0\r\nHost: {HOST}\r\nContent-Length: 2\r\n\r\n{{}}".encode())
        answer = await asyncio.wait_for(reader.read(), 5.0)  # until the entry closes the connection
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"".join(events)
    assert entry.outcomes == [True]


async def test_concurrent_streams_get_threads_and_at_most_a_few_stay(servers, peer_client: PeerClient,
                                                                     side: Side) -> None:
    events = [b"data: {\"n\": %d}\n\n" % i for i in range(20)] + [DONE]
    peer_url = await servers(side=side, handler=sse_answer(events, pause=0.01))
    entry = await start_entry(servers, peer_client, side.peer_id, peer_url, threaded=True)
    most = 0

    async def one(session: aiohttp.ClientSession) -> bytes:
        nonlocal most
        async with session.post(entry.url + "/v1/completions", data=b"{}") as routed:
            first = await routed.content.readuntil(b"\n\n")
            most = max(most, StreamThread.running)
            return first + await routed.read()

    async with aiohttp.ClientSession() as session:
        bodies = await asyncio.gather(*(one(session) for _ in range(10)))
    assert bodies == [b"".join(events)] * 10 and entry.outcomes == [True] * 10
    assert most == 10  # every stream had a thread
    assert StreamThread.running == 0
    def relay_threads() -> int:
        return sum(t.name == "p2pai-relay" for t in threading.enumerate())

    deadline = time.monotonic() + 2.0  # a thread ends just after its stream's end is reported
    while relay_threads() > IDLE_THREADS and time.monotonic() < deadline:  # noqa: ASYNC110 - threads end with no event
        await asyncio.sleep(0.01)
    assert relay_threads() <= IDLE_THREADS


async def test_a_slow_reader_pauses_reading_from_the_peer(servers, peer_client: PeerClient, side: Side,
                                                         threaded: bool) -> None:
    piece = b"data: " + b"y" * (64 * 1024) + b"\n\n"
    total = 64 * 1024 * 1024 // len(piece)
    written = [0]

    async def peer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(total):
            await response.write(piece)
            written[0] += 1
        await response.write(DONE)
        await response.write_eof()
        return response

    peer_url = await servers(side=side, handler=peer)
    entry = await start_entry(servers, peer_client, side.peer_id, peer_url, threaded)
    port = int(entry.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"POST /v1/completions HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 2\r\n\r\n{{}}".encode())
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(1.0)  # the client reads nothing meanwhile
        stalled = written[0]
        await asyncio.sleep(0.3)
        assert written[0] == stalled < total // 2  # the peer waits for the entry, which waits for the client
        assert StreamThread.running == int(threaded)
        transport = entry.requests[0].transport
        assert transport is not None
        # Past the high-water mark the entry stops reading the peer; what one read already brought
        # (asyncio reads up to 256 KiB at a time) is still written, with its chunk framing.
        assert transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1] + ONE_READ + 64
        body = bytearray()
        deadline = time.monotonic() + 30
        while not body.endswith(b"\r\n0\r\n\r\n") and time.monotonic() < deadline:
            body += await asyncio.wait_for(reader.read(1 << 20), 10)
    finally:
        writer.close()
    assert body.count(b"data: y") == total and body.endswith(DONE + b"\r\n0\r\n\r\n")
    assert entry.outcomes == [True]


@pytest.mark.parametrize("cancel_handlers", [True, False])
async def test_a_client_that_leaves_mid_stream_closes_the_peer_connection(
        servers, peer_client: PeerClient, side: Side, cancel_handlers: bool, threaded: bool) -> None:
    peer_ended = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for _ in range(1000):  # 10 s at most
                await response.write(b"data: {}\n\n")
                await asyncio.sleep(0.01)
        finally:
            peer_ended.set()
        return response

    peer_url = await servers(side=side, handler=endless)
    entry = await start_entry(servers, peer_client, side.peer_id, peer_url, threaded, cancel_handlers)
    async with aiohttp.ClientSession() as session, session.post(entry.url + "/v1/completions", data=b"{}") as routed:
        assert await routed.content.readuntil(b"\n\n") == b"data: {}\n\n"
    left = time.monotonic()
    await asyncio.wait_for(peer_ended.wait(), 3.0)
    assert time.monotonic() - left < 1.0
    assert entry.upstreams[0]._connection.closed  # aborted, not put back into the pool
    if not cancel_handlers:  # the relay noticed by itself
        assert entry.outcomes == ["client gone"]


async def test_closing_the_answer_ends_a_silent_stream_at_once(servers, peer_client: PeerClient, side: Side,
                                                              threaded: bool
                                                              ) -> None:
    async def silent_after_two(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: 1\n\n")
        await response.write(b"data: 2\n\n")
        await asyncio.sleep(10)  # like a frozen peer
        return response

    peer_url = await servers(side=side, handler=silent_after_two)
    entry = await start_entry(servers, peer_client, side.peer_id, peer_url, threaded)
    async with aiohttp.ClientSession() as session, session.post(entry.url + "/v1/completions", data=b"{}") as routed:
        assert await routed.content.readuntil(b"\n\n") == b"data: 1\n\n"
        await routed.content.readuntil(b"\n\n")
        assert StreamThread.running == int(threaded)
        closed = time.monotonic()
        entry.upstreams[0].close()  # what the router does when the peer goes offline
        assert await asyncio.wait_for(routed.read(), 2.0) == b""
    assert time.monotonic() - closed < 0.5
    assert entry.outcomes == [False]
    assert b"".join(entry.kept) == b"data: 1\n\ndata: 2\n\n"


async def test_a_thread_waiting_for_a_slow_client_stops_when_the_answer_is_closed(servers, peer_client: PeerClient,
                                                                                  side: Side
                                                                                 ) -> None:
    piece = b"data: " + b"z" * (64 * 1024) + b"\n\n"

    async def flood(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(1000):  # 64 MB, far more than the socket buffers hold
            await response.write(piece)
        return response

    peer_url = await servers(side=side, handler=flood)
    entry = await start_entry(servers, peer_client, side.peer_id, peer_url, threaded=True)
    port = int(entry.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"POST /v1/completions HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 2\r\n\r\n{{}}".encode())
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.5)  # the client reads nothing: the thread waits to send
        assert StreamThread.running == 1 and not entry.outcomes
        closed = time.monotonic()
        entry.upstreams[0].close()
        deadline = time.monotonic() + 3
        while not entry.outcomes and time.monotonic() < deadline:  # noqa: ASYNC110 - the test's list has no event
            await asyncio.sleep(0.02)
    finally:
        writer.close()
    assert entry.outcomes == [False] and time.monotonic() - closed < 1.0
    assert StreamThread.running == 0


@pytest.mark.parametrize("thread_after", [0, 5], ids=["at-once", "handed-over"])
@pytest.mark.parametrize("split_every", [1, 7, 1000])
async def test_a_stream_taken_over_mid_chunk_is_relayed_whole_and_its_connection_reused(
        servers, peer_client: PeerClient, side: Side, threaded: bool, split_every: int, thread_after: int) -> None:
    events = [b"data: {\"n\": %d}\n\n" % i for i in range(20)] + [DONE]
    chunked = b"".join(b"%x\r\n%b\r\n" % (len(event), event) for event in events) + b"0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    url, server, heads = await raw_peer([head + chunked, head + chunked], split_every, side)
    try:
        entry = await start_entry(servers, peer_client, side.peer_id, url, threaded, thread_after=thread_after)
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.post(entry.url + "/v1/completions", data=b"{}") as routed:
                    assert await routed.read() == b"".join(events)
    finally:
        server.close()
    assert entry.outcomes == [True, True]
    assert len(heads) == 2  # both requests on the one connection raw_peer serves


async def raw_peer(answers: list[bytes], split_every: int, side: Side, hang_up: bool = False
                   ) -> tuple[str, asyncio.Server, list[bytes]]:
    """A peer that sends each canned answer a few bytes at a time, on one keep-alive connection,
    then waits for the client to close it (or, with ``hang_up``, closes it)."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for answer in answers:
            head = await reader.readuntil(b"\r\n\r\n")
            heads.append(head)
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            for start in range(0, len(answer), split_every):
                writer.write(answer[start:start + split_every])
                await writer.drain()
                await asyncio.sleep(0.001)
        if not hang_up:
            await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, HOST, 0,
                                        ssl=side.peer.server_context() if side.peer is not None else None)
    return f"{side.scheme}://{HOST}:{server.sockets[0].getsockname()[1]}", server, heads


@pytest.mark.parametrize("split_every", [1, 3, 1000])
async def test_answers_split_anywhere_parse_the_same(peer_client: PeerClient, side: Side, split_every: int) -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"6;ext=1\r\nhello \r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n")
    by_length = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nRetry-After: 2\r\n\r\nbusy"
    url, server, heads = await raw_peer([chunked, by_length], split_every, side)
    try:
        first = await peer_client.request(url, "POST", "/v1/x", {"X-P2PAI-Peer": "me"}, b"{}", side.peer_id)
        assert first.status == 200 and first.content_type == "text/event-stream"
        assert await first.read() == b"hello abcdefghijklmnopqrstuvwxyz"
        first.release()
        second = await peer_client.request(url, "POST", "/v1/y", {}, b"[]", side.peer_id)
        assert (second.status, second.headers["Retry-After"], await second.read()) == (503, "2", b"busy")
        second.release()
    finally:
        server.close()
    assert heads[0].startswith(b"POST /v1/x HTTP/1.1\r\n") and b"\r\nX-P2PAI-Peer: me\r\n" in heads[0]
    assert heads[1].startswith(b"POST /v1/y HTTP/1.1\r\n")  # on the same connection


async def test_an_answer_cut_mid_chunk_is_broken(peer_client: PeerClient, side: Side) -> None:
    cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nonly part"
    url, server, _ = await raw_peer([cut], 1000, side, hang_up=True)
    try:
        answer = await peer_client.request(url, "POST", "/", {}, b"", side.peer_id)
        with pytest.raises(AnswerBroken):
            await asyncio.wait_for(answer.read(), 5)
    finally:
        server.close()


@pytest.mark.parametrize(("data", "whole"), [
    (b"5\r\nhello\r\n", b"hello"),
    (b"5;ext=1\r\nhello\r\n", None),  # extensions go the general way
    (b"0\r\n\r\n", None),  # the end of the body
    (b"5\r\nhello\r\n0\r\n\r\n", None),  # more than one chunk
    (b"5\r\nhel", None),
    (b"5\r\nhello\r\n5\r\nworld\r\n", None),
    (b"x\r\nhello\r\n", None),
])
def test_a_read_of_exactly_one_whole_chunk_can_be_passed_on_as_it_came(data: bytes, whole: bytes | None) -> None:
    assert Dechunker().whole(data) == whole


def test_a_read_in_the_middle_of_a_chunk_is_not_whole() -> None:
    dechunker = Dechunker()
    assert dechunker.feed(b"a\r\nhello")[0] == b"hello"
    assert dechunker.whole(b"3\r\nab\r\n") is None  # the 10-byte chunk's last 5 bytes, and its end
    assert dechunker.feed(b"3\r\nab\r\n") == (b"3\r\nab", None)


async def test_an_answer_beyond_the_size_limit_ends_broken(servers, side: Side, threaded: bool) -> None:
    limit = 64 * 1024
    piece = b"data: " + b"w" * 1000 + b"\n\n"

    async def large(request: web.Request) -> web.StreamResponse:
        if request.path == "/whole":  # not streamed: read whole by the entry, with its length announced
            return web.Response(body=b"x" * (limit + 1), content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream" if request.path == "/sse"
                                               else "application/json"})
        await response.prepare(request)
        for _ in range(200):  # 200 kB, and an endless peer would go on
            await response.write(piece)
        await response.write_eof()
        return response

    client = PeerClient(connect_timeout=3.0, tls=side.entry, max_answer_bytes=limit)
    try:
        peer_url = await servers(side=side, handler=large)
        for path in ("/whole", "/chunked"):
            answer = await client.request(peer_url, "POST", path, {}, b"{}", side.peer_id)
            with pytest.raises(AnswerBroken, match=r"exceeded|size limit"):
                await asyncio.wait_for(answer.read(), 5)
            answer.release()
        entry = await start_entry(servers, client, side.peer_id, peer_url, threaded)
        async with aiohttp.ClientSession() as session, session.post(entry.url + "/sse", data=b"{}") as routed:
            body = await asyncio.wait_for(routed.content.read(), 5)
    finally:
        client.close()
    assert entry.outcomes == [False] and entry.upstreams[0]._connection.closed
    assert len(b"".join(entry.kept)) <= limit  # (nothing, when the first read already held too much)
    assert len(body) < limit + 4096 and DONE not in body
