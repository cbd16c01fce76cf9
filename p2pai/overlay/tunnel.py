"""A request/response tunnel over libp2p, for peers that cannot be reached
directly. Opaque bytes: the overlay knows nothing of what is tunnelled.

Each node keeps one long-lived stream to each peer it tunnels to and
multiplexes exchanges over it with request ids: py-libp2p 0.8.1 corrupts a
connection now and then when streams are opened and closed at a high rate,
while long-lived streams (like the announcement links) stay healthy.

An exchange is a REQUEST frame, then DATA frames and an explicit END (or
ERROR) frame, because a killed peer looks like a clean end of stream to the
reader. CANCEL tells the answering side that the asker gave up. Everything
here runs in the trio thread.

Whether the peer may have worked on a request that failed matters to the
router (a request that may have killed one node goes to one more at most):
a request that could not be sent, or that the peer answered with ERROR before
any DATA, never got further than the peer's handler (NotDelivered); a link that
breaks after the request went out may have taken the peer down with it (BROKEN).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import trio

if TYPE_CHECKING:
    from libp2p.abc import IHost, INetStream
    from libp2p.custom_types import TProtocol

log = logging.getLogger(__name__)

TUNNEL_PROTOCOL = cast("TProtocol", "/p2pai/tunnel/2.0.0")  # a cast: libp2p is imported lazily
REQUEST, DATA, END, ERROR, CANCEL = range(5)
BROKEN = -1  # never on the wire: what the exchanges waiting on a link get when the link breaks
MAX_REQUEST_BYTES = 27 * 1024 * 1024  # the HTTP API's largest body (an audio upload, 26 MiB) plus headers
MAX_DATA_BYTES = 1024 * 1024
MAX_EXCHANGES_PER_PEER = 64
OPEN_TIMEOUT = 3.0
SEND_TIMEOUT = 10.0  # a reader that stops reading for this long is gone
_HEADER_BYTES = 9  # length (4), request id (4), kind (1)


class TunnelBroken(Exception):
    """The exchange ended without END: the peer died, refused or answered garbage."""


class NotDelivered(TunnelBroken):
    """The request never reached the peer's handler, or its handler could not pass it on (its
    ERROR came before any DATA): nothing worked on it there."""


class _Link:
    """One stream to or from a peer: frames are written whole, one at a time."""

    def __init__(self, stream: INetStream) -> None:
        self.stream = stream
        self._lock = trio.Lock()

    async def send(self, request_id: int, kind: int, data: bytes = b"") -> None:
        frame = len(data).to_bytes(4, "big") + request_id.to_bytes(4, "big") + bytes([kind]) + data
        async with self._lock:
            with trio.fail_after(SEND_TIMEOUT):
                await self.stream.write(frame)

    async def receive(self, limit: int) -> tuple[int, int, bytes]:
        header = await self._read(_HEADER_BYTES)
        length, request_id, kind = int.from_bytes(header[:4], "big"), int.from_bytes(header[4:8], "big"), header[8]
        if length > limit or kind > CANCEL:
            raise TunnelBroken(f"bad frame (kind {kind}, {length} bytes)")
        return request_id, kind, await self._read(length) if length else b""

    async def _read(self, count: int) -> bytes:
        """Exactly ``count`` bytes. Not libp2p's read_exactly: it gives up after 100 reads, and a read
        returns one yamux frame (at most 64 KiB), so it fails any frame over about 6 MiB."""
        buffer = bytearray()
        while len(buffer) < count:
            piece = await self.stream.read(count - len(buffer))
            if not piece:
                raise TunnelBroken(f"the link ended {len(buffer)} bytes into a {count}-byte read")
            buffer += piece
        return bytes(buffer)

    async def reset(self) -> None:
        with trio.move_on_after(0.5), contextlib.suppress(Exception):  # it may be gone already
            await self.stream.reset()


class _Outgoing:
    """This node's link to one peer and the exchanges waiting on it."""

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.waiting: dict[int, Callable[[int, bytes], None]] = {}
        self.broken: TunnelBroken | None = None


class TunnelClient:
    def __init__(self) -> None:
        self._links: dict[str, _Outgoing] = {}
        self._opening: dict[str, trio.Event] = {}
        self._ids = itertools.count(1)

    async def exchange(self, host: IHost, nursery: trio.Nursery, peer_id: str, request: bytes,
                       deliver: Callable[[int, bytes], None]) -> None:
        """Send ``request`` to ``peer_id`` and ``deliver(kind, data)`` each frame of the answer."""
        outgoing = await self._link_to(host, nursery, peer_id)
        request_id = next(self._ids) & 0xFFFFFFFF
        done = trio.Event()

        def arrive(kind: int, data: bytes) -> None:
            deliver(kind, data)
            if kind != DATA:
                done.set()

        outgoing.waiting[request_id] = arrive
        try:
            try:
                await outgoing.link.send(request_id, REQUEST, request)
            except Exception as exc:  # a frame written in part is no request to the peer
                raise NotDelivered(f"could not send the request: {exc!r}") from exc
            await done.wait()
        except BaseException:
            if not done.is_set() and outgoing.broken is None:
                with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await outgoing.link.send(request_id, CANCEL)
            raise
        finally:
            outgoing.waiting.pop(request_id, None)
        if outgoing.broken is not None and not done.is_set():
            raise outgoing.broken

    async def _link_to(self, host: IHost, nursery: trio.Nursery, peer_id: str) -> _Outgoing:
        while peer_id in self._opening:
            await self._opening[peer_id].wait()
        existing = self._links.get(peer_id)
        if existing is not None:
            return existing
        from libp2p.peer.id import ID

        self._opening[peer_id] = opened = trio.Event()
        try:
            with trio.move_on_after(OPEN_TIMEOUT):
                stream = await host.new_stream(ID.from_base58(peer_id), [TUNNEL_PROTOCOL])
                outgoing = self._links[peer_id] = _Outgoing(_Link(stream))
                nursery.start_soon(self._read_answers, peer_id, outgoing)
                return outgoing
            raise NotDelivered("could not open a tunnel stream in time")
        except NotDelivered:
            raise
        except Exception as exc:
            raise NotDelivered(f"could not open a tunnel stream: {exc!r}") from exc
        finally:
            del self._opening[peer_id]
            opened.set()

    async def _read_answers(self, peer_id: str, outgoing: _Outgoing) -> None:
        try:
            while True:
                request_id, kind, data = await outgoing.link.receive(MAX_DATA_BYTES)
                arrive = outgoing.waiting.get(request_id)
                if arrive is not None:
                    arrive(kind, data)
        except Exception as exc:  # noqa: BLE001 - end of stream, reset, dead peer, garbage
            outgoing.broken = exc if isinstance(exc, TunnelBroken) else TunnelBroken(f"the link broke: {exc!r}")
            log.debug("tunnel link to %s ended: %r", peer_id, exc)
        finally:
            if self._links.get(peer_id) is outgoing:
                del self._links[peer_id]
            for arrive in list(outgoing.waiting.values()):
                arrive(BROKEN, str(outgoing.broken).encode())
            await outgoing.link.reset()


class TunnelServer:
    """Answers the exchanges arriving on peers' tunnel links.

    ``serve(peer, request, send_channel)`` is called for each request and runs
    on the asyncio side: it pushes (kind, data) pairs into the trio memory
    channel it is given, ending with END or ERROR; here they are written to the
    link in order. Closing the channel's receive side (the asker cancelled or
    the link died) makes the asyncio side's sends fail, which stops it.
    """

    def __init__(self, serve: Callable[[str, bytes, Any], None]) -> None:
        self._serve = serve
        self._open: defaultdict[str, int] = defaultdict(int)
        self.refused = 0

    async def handle(self, stream: INetStream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        link = _Link(stream)
        answering: dict[int, trio.CancelScope] = {}
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    request_id, kind, data = await link.receive(MAX_REQUEST_BYTES)
                    if kind == CANCEL and request_id in answering:
                        answering[request_id].cancel()
                    elif kind == REQUEST and len(answering) >= MAX_EXCHANGES_PER_PEER:
                        self.refused += 1
                        await link.send(request_id, ERROR, b"too many tunnelled requests at once")
                    elif kind == REQUEST:
                        answering[request_id] = trio.CancelScope()
                        nursery.start_soon(self._answer, peer, link, request_id, data, answering)
        except Exception as exc:  # noqa: BLE001 - the asker's link ended (libp2p's types vary)
            log.debug("tunnel link from %s ended: %r", peer, exc)
        finally:
            await link.reset()

    async def _answer(self, peer: str, link: _Link, request_id: int, request: bytes,
                      answering: dict[int, trio.CancelScope]) -> None:
        send, receive = trio.open_memory_channel[tuple[int, bytes]](16)
        try:
            with answering[request_id], receive:
                self._serve(peer, request, send)
                async for kind, data in receive:
                    await link.send(request_id, kind, data)
                    if kind != DATA:
                        break
        finally:
            answering.pop(request_id, None)
