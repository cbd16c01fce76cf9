"""The authenticated, encrypted channel between a node and a worker's RPC server.

llama.cpp's RPC protocol has no authentication, so the server listens on
loopback only and members reach it through this relay:

    llama.cpp (node child) -> Forwarder 127.0.0.1:eph -> [TCP, this protocol] -> RelayServer -> 127.0.0.1:rpc

Handshake (both sides prove they hold the swarm's rpc_key and own their peer
id, whose Ed25519 key signs; nothing secret is sent):

    C -> S  MAGIC, client nonce, client peer id
    S -> C  server nonce, worker peer id
    C -> S  HMAC(rpc_key, "client" | transcript), Ed25519 signature of the same
    S -> C  status byte; OK + HMAC(rpc_key, "server" | transcript) + signature, else a reason

The transcript binds both nonces and both peer ids. Then every byte travels in
AES-GCM frames under per-session keys derived from both nonces; a PING frame
goes out after a second of silence, and a side that hears nothing for
IDLE_TIMEOUT closes, so a frozen or vanished peer is noticed.

The lease: while one node has a session open, the relay refuses every other
node, with the holder's id as the reason. A worker may admit only some nodes
(`admits`), and end a session that moved no data for `lease_idle` seconds,
telling the node why in a CLOSE frame.

Both local ends are fenced: the worker reaches llama.cpp's RPC server only
through sockets that server's process hands it (see server.py), and a node's
Forwarder serves only connections opened by its own process (llama.cpp's RPC
client in the model's child process), never another local process.

Connections are asyncio protocols (`_Link`), not streams: about nine messages
cross the relay per generated token, each through two relays, and a callback
per arrival costs a third of a stream reader's task wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ...identity import Identity, public_key_from_peer_id, verify_signature

log = logging.getLogger(__name__)

MAGIC = b"P2PAIRPC\x01"
NONCE_BYTES = 32
MAC_BYTES = 32
PROOF_BYTES = MAC_BYTES + 64
MAX_ID_BYTES = 128
HANDSHAKE_TIMEOUT = 5.0
PING_INTERVAL = 1.0
IDLE_TIMEOUT = 4.0
MAX_FRAME = 256 * 1024
_DATA, _PING, _CLOSE = 0, 1, 2
_OK, _REFUSED = 0, 1
_LENGTH = struct.Struct("!I")


class RelayRefused(ConnectionError):
    """The worker would not open a session; the message says why."""


@dataclass(frozen=True)
class Credentials:
    """One side of the relay: its identity (the peer id it signs for) and the swarm's rpc_key."""

    identity: Identity
    key: bytes = field(repr=False)

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    def prove(self, role: bytes, transcript: bytes) -> bytes:
        """Membership (HMAC with the swarm's key) and ownership of the peer id (signature)."""
        return _mac(self.key, role, transcript) + self.identity.sign(role + transcript)

    def check(self, proof: bytes, role: bytes, transcript: bytes, peer_id: str) -> bool:
        """Whether `proof` comes from a member that owns `peer_id`."""
        public_key = public_key_from_peer_id(peer_id)
        return (
            public_key is not None
            and hmac.compare_digest(proof[:MAC_BYTES], _mac(self.key, role, transcript))
            and verify_signature(public_key, proof[MAC_BYTES:], role + transcript)
        )


@dataclass(frozen=True)
class Endpoint:
    """Where a worker's relay listens and who it must be."""

    peer_id: str
    host: str
    port: int


def _pack_id(peer_id: str) -> bytes:
    raw = peer_id.encode()
    if len(raw) > MAX_ID_BYTES:
        raise ValueError("peer id too long")
    return struct.pack("!H", len(raw)) + raw


class _Link(asyncio.Protocol):
    """One TCP connection of the relay: exact reads for the handshake, then a callback per arrival.

    While piping, a link whose writes back up pauses reading on its source link.
    """

    def __init__(self, on_connect: Callable[[_Link], None] | None = None) -> None:
        self._on_connect = on_connect
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Callable[[bytes], None] | None = None
        self.source: _Link | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self._on_connect is not None:
            self._on_connect(self)

    def data_received(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink(data)
        else:
            self._buffer += data
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self._wake()

    def pause_writing(self) -> None:
        if self.source is not None and self.source.transport is not None:
            self.source.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.source is not None and self.source.transport is not None:
            self.source.transport.resume_reading()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def readexactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            if self.closed.done():
                raise asyncio.IncompleteReadError(bytes(self._buffer), n)
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def read_id(self) -> str:
        (size,) = struct.unpack("!H", await self.readexactly(2))
        if size > MAX_ID_BYTES:
            raise ConnectionError("peer id too long")
        return (await self.readexactly(size)).decode()

    def deliver_to(self, sink: Callable[[bytes], None]) -> None:
        """From now on hand every arrival to `sink`, starting with what the handshake left unread."""
        self._sink = sink
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            sink(data)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def peername(self) -> object:
        return self.transport.get_extra_info("peername") if self.transport is not None else None


def _mac(key: bytes, role: bytes, transcript: bytes) -> bytes:
    return hmac.new(key, role + transcript, hashlib.sha256).digest()


def _session_keys(key: bytes, transcript: bytes) -> tuple[AESGCM, AESGCM]:
    """(client->server, server->client) ciphers, fresh for every session."""
    material = HKDF(algorithm=hashes.SHA256(), length=64, salt=hashlib.sha256(transcript).digest(),
                    info=b"p2pai/v1/rpc-session").derive(key)
    return AESGCM(material[:32]), AESGCM(material[32:])


class _Sealer:
    """One direction of a session: AES-GCM frames with a counter nonce."""

    def __init__(self, cipher: AESGCM) -> None:
        self._cipher = cipher
        self._counter = 0
        self._pending = bytearray()

    def _nonce(self) -> bytes:
        self._counter += 1
        return self._counter.to_bytes(12, "big")

    def seal(self, kind: int, payload: bytes) -> bytes:
        body = self._cipher.encrypt(self._nonce(), bytes([kind]) + payload, None)
        return _LENGTH.pack(len(body)) + body

    def open(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """The frames completed by `data`, in order; ConnectionError at one that is oversized or forged."""
        self._pending += data
        while len(self._pending) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._pending)
            if size > MAX_FRAME + 64:
                raise ConnectionError("oversized frame")
            end = _LENGTH.size + size
            if len(self._pending) < end:
                return
            try:
                plain = self._cipher.decrypt(self._nonce(), bytes(self._pending[_LENGTH.size:end]), None)
            except InvalidTag:
                raise ConnectionError("a frame failed authentication") from None
            del self._pending[:end]
            yield plain[0], plain[1:]


@dataclass
class Traffic:
    """Bytes moved through one relay, as the worker reports them."""

    sessions: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


async def pipe(plain: _Link, sealed: _Link, send: _Sealer, receive: _Sealer, traffic: Traffic | None = None,
               idle_limit: float | None = None) -> bool:
    """Move bytes both ways until either side ends, stalls past IDLE_TIMEOUT or tampers, or (with
    ``idle_limit``) no data moved for that many seconds: then the remote side is told why.

    Returns True when the sealed (remote) side hung up first; raises ConnectionError otherwise.
    """
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[bool] = loop.create_future()
    last_sent = last_heard = last_data = loop.time()
    counted = traffic or Traffic()

    def end(result: bool | Exception) -> None:
        if ended.done():
            return
        if isinstance(result, Exception):
            ended.set_exception(result)
        else:
            ended.set_result(result)

    def send_frame(kind: int, payload: bytes) -> None:
        nonlocal last_sent
        sealed.write(send.seal(kind, payload))
        last_sent = loop.time()

    def outbound(data: bytes) -> None:
        nonlocal last_data
        last_data = loop.time()
        for start in range(0, len(data), MAX_FRAME):
            send_frame(_DATA, data[start:start + MAX_FRAME])
        counted.bytes_out += len(data)

    def inbound(data: bytes) -> None:
        nonlocal last_heard, last_data
        last_heard = loop.time()
        try:
            for kind, payload in receive.open(data):
                if kind == _DATA:
                    last_data = last_heard
                    plain.write(payload)
                    counted.bytes_in += len(payload)
                elif kind == _CLOSE:
                    end(ConnectionError(f"the worker ended the session: {payload.decode(errors='replace')}"))
        except ConnectionError as exc:
            end(ConnectionError(f"the relay connection failed: {exc}"))

    timer: asyncio.TimerHandle  # armed below, re-armed by every tick

    def tick() -> None:
        nonlocal timer
        now = loop.time()
        if now - last_heard >= IDLE_TIMEOUT:
            end(ConnectionError(f"no traffic for {IDLE_TIMEOUT:.0f} s: the peer is frozen or gone"))
            return
        if idle_limit is not None and now - last_data >= idle_limit:
            reason = f"the lease ended after {idle_limit:g} s without traffic"
            send_frame(_CLOSE, reason.encode())
            end(ConnectionError(reason))
            return
        if now - last_sent >= PING_INTERVAL:
            send_frame(_PING, b"")
        timer = loop.call_later(PING_INTERVAL / 2, tick)

    timer = loop.call_later(PING_INTERVAL / 2, tick)
    plain.source, sealed.source = sealed, plain
    plain.closed.add_done_callback(lambda _: end(False))
    sealed.closed.add_done_callback(lambda _: end(True))
    plain.deliver_to(outbound)
    sealed.deliver_to(inbound)
    try:
        return await ended
    finally:
        timer.cancel()
        plain.close()
        sealed.close()


@dataclass
class Lease:
    """Which node may use this worker: the one whose sessions are open."""

    holder: str | None = None
    sessions: int = 0

    def acquire(self, peer_id: str) -> str | None:
        """None when granted, else the reason for refusing."""
        if self.holder not in (None, peer_id):
            return f"the worker is in use by {self.holder}"
        self.holder = peer_id
        self.sessions += 1
        return None

    def release(self) -> None:
        self.sessions -= 1
        if self.sessions == 0:
            self.holder = None


@dataclass
class RelayServer:
    """The worker's side: authenticates nodes and pipes them to the RPC server.

    ``connect_rpc`` opens a connection to the RPC server; ``admits(peer_id)`` says whether a
    node that proved its membership and peer id may use this worker; a session that moves
    no data for ``lease_idle`` seconds is ended (None: never).
    """

    credentials: Credentials
    connect_rpc: Callable[[], Awaitable[socket.socket]]
    on_change: Callable[[], None] = lambda: None
    admits: Callable[[str], bool] = lambda _: True
    lease_idle: float | None = None
    lease: Lease = field(default_factory=Lease)
    traffic: Traffic = field(default_factory=Traffic)
    refused: int = 0
    _server: asyncio.base_events.Server | None = None
    _sessions: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def peer_id(self) -> str:
        return self.credentials.peer_id

    async def start(self, host: str, port: int) -> int:
        self._server = await _serve_links(host, port, self._serve, self._sessions)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, link: _Link) -> None:
        try:
            client_id, send, receive = await asyncio.wait_for(self._handshake(link), HANDSHAKE_TIMEOUT)
        except (OSError, EOFError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
            self.refused += 1
            log.info("refused a relay connection from %s: %s", link.peername(), exc)
            link.close()
            return
        try:
            local = await _adopt_link(await self.connect_rpc())
        except OSError as exc:
            log.warning("the RPC server is unreachable: %s", exc)
            self.lease.release()
            link.close()
            return
        self.traffic.sessions += 1
        self.on_change()
        try:
            await pipe(local, link, send, receive, self.traffic, self.lease_idle)
        except ConnectionError as exc:
            log.info("session of %s ended: %s", client_id, exc)
        finally:
            self.lease.release()
            self.on_change()

    async def _handshake(self, link: _Link) -> tuple[str, _Sealer, _Sealer]:
        if await link.readexactly(len(MAGIC)) != MAGIC:
            raise ConnectionError("not a p2pai relay client")
        client_nonce = await link.readexactly(NONCE_BYTES)
        client_id = await link.read_id()
        server_nonce = os.urandom(NONCE_BYTES)
        link.write(server_nonce + _pack_id(self.peer_id))
        transcript = client_nonce + server_nonce + _pack_id(client_id) + _pack_id(self.peer_id)
        if not self.credentials.check(await link.readexactly(PROOF_BYTES), b"client", transcript, client_id):
            link.write(bytes([_REFUSED]) + _pack_id("authentication failed"))
            raise ConnectionError(f"{client_id}: bad proof of token or peer id")
        if not self.admits(client_id):
            link.write(bytes([_REFUSED]) + _pack_id("this worker admits only the nodes named by its --allow-node"))
            raise ConnectionError(f"{client_id}: not on this worker's --allow-node list")
        reason = self.lease.acquire(client_id)
        if reason is not None:
            link.write(bytes([_REFUSED]) + _pack_id(reason))
            raise ConnectionError(f"{client_id}: {reason}")
        link.write(bytes([_OK]) + self.credentials.prove(b"server", transcript))
        to_server, to_client = _session_keys(self.credentials.key, transcript)
        return client_id, _Sealer(to_client), _Sealer(to_server)


async def _serve_links(
    host: str, port: int, serve: Callable[[_Link], Coroutine[Any, Any, None]], tasks: set[asyncio.Task[None]]
) -> asyncio.base_events.Server:
    """A TCP server running `serve(link)` as a task for every connection (tasks kept until done)."""

    def connected(link: _Link) -> None:
        task = asyncio.create_task(serve(link))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return await asyncio.get_running_loop().create_server(lambda: _Link(connected), host, port)


async def _open_link(host: str, port: int) -> _Link:
    _, link = await asyncio.get_running_loop().create_connection(_Link, host, port)
    return link


async def _adopt_link(sock: socket.socket) -> _Link:
    """A link over an already connected socket."""
    _, link = await asyncio.get_running_loop().create_connection(_Link, sock=sock)
    return link


async def connect(endpoint: Endpoint, credentials: Credentials) -> tuple[_Link, _Sealer, _Sealer]:
    """Open an authenticated session to a worker's relay; raises RelayRefused or OSError."""
    link = await asyncio.wait_for(_open_link(endpoint.host, endpoint.port), HANDSHAKE_TIMEOUT)
    try:
        send, receive = await asyncio.wait_for(_client_handshake(link, endpoint, credentials), HANDSHAKE_TIMEOUT)
        return link, send, receive
    except asyncio.IncompleteReadError:
        link.close()
        raise RelayRefused(f"{endpoint.host}:{endpoint.port} closed the connection during the handshake") from None
    except BaseException:
        link.close()
        raise


async def _client_handshake(link: _Link, endpoint: Endpoint, credentials: Credentials) -> tuple[_Sealer, _Sealer]:
    client_nonce = os.urandom(NONCE_BYTES)
    link.write(MAGIC + client_nonce + _pack_id(credentials.peer_id))
    server_nonce = await link.readexactly(NONCE_BYTES)
    worker_id = await link.read_id()
    if worker_id != endpoint.peer_id:
        raise RelayRefused(f"expected worker {endpoint.peer_id}, found {worker_id}")
    transcript = client_nonce + server_nonce + _pack_id(credentials.peer_id) + _pack_id(worker_id)
    link.write(credentials.prove(b"client", transcript))
    if (await link.readexactly(1))[0] != _OK:
        raise RelayRefused(f"worker {worker_id} refused: {await link.read_id()}")
    if not credentials.check(await link.readexactly(PROOF_BYTES), b"server", transcript, worker_id):
        raise RelayRefused(f"worker {worker_id} does not prove this swarm's token and its peer id")
    to_server, to_client = _session_keys(credentials.key, transcript)
    return _Sealer(to_server), _Sealer(to_client)


class Forwarder:
    """The node's side: a loopback port for llama.cpp that tunnels each connection to one worker.

    `on_lost(endpoint, reason)` runs before the llama.cpp side is closed, so
    the owner learns which worker failed before llama.cpp aborts.
    """

    def __init__(
        self, endpoint: Endpoint, credentials: Credentials, on_lost: Callable[[Endpoint, str], Awaitable[None] | None]
    ) -> None:
        self.endpoint = endpoint
        self._credentials = credentials
        self._on_lost = on_lost
        self._server: asyncio.base_events.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self.port = 0
        self.refused = 0
        """Connections refused because another process opened them."""

    async def start(self) -> int:
        self._server = await _serve_links("127.0.0.1", 0, self._serve, self._sessions)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, link: _Link) -> None:
        assert link.transport is not None
        if not opened_by_this_process(link.transport):
            self.refused += 1
            log.warning("refused a connection to the RPC forwarder of worker %s from another process (%s)",
                        self.endpoint.peer_id, link.peername())
            link.close()
            return
        try:
            remote, send, receive = await connect(self.endpoint, self._credentials)
            if await pipe(link, remote, send, receive):
                await self._lost("the worker closed the connection")
        except (OSError, ValueError) as exc:  # ConnectionError and RelayRefused are OSErrors
            await self._lost(str(exc) or repr(exc))
        finally:
            link.close()

    async def _lost(self, reason: str) -> None:
        result = self._on_lost(self.endpoint, reason)
        if result is not None:
            await result


def opened_by_this_process(transport: asyncio.BaseTransport) -> bool:
    """Whether this process opened the TCP connection that reached us over ``transport``: one of
    its own sockets (/proc/self/fd) must be the connection's client end, i.e. have its addresses
    the other way round (two sockets never share both). Without /proc (not Linux) the check
    cannot be made and passes."""
    client, server = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return True
    for fd in descriptors:
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") and _is_client_end(int(fd), client, server):
                return True
        except OSError:  # closed meanwhile, not a socket any more, or not connected
            continue
    return False


def _is_client_end(fd: int, client: object, server: object) -> bool:
    duplicate = os.dup(fd)  # inspected through a duplicate: closing it closes nothing of the owner's
    try:
        candidate = socket.socket(fileno=duplicate)
    except OSError:
        os.close(duplicate)
        raise
    with candidate:
        return candidate.getsockname() == client and candidate.getpeername() == server


async def probe(endpoint: Endpoint, credentials: Credentials) -> str:
    """Health check: authenticate, then ask the RPC server behind the relay for its protocol version."""
    from .server import rpc_hello

    failures: list[str] = []
    forwarder = Forwarder(endpoint, credentials, lambda _, reason: failures.append(reason))
    port = await forwarder.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(rpc_hello(reader, writer), HANDSHAKE_TIMEOUT * 2)
        except (asyncio.IncompleteReadError, OSError, asyncio.TimeoutError) as exc:
            raise RelayRefused(failures[0] if failures else f"the RPC server did not answer: {exc!r}") from None
        finally:
            writer.close()
    finally:
        await forwarder.stop()
