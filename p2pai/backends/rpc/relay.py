"""The authenticated, encrypted channel between a node and a worker's RPC server.

llama.cpp's RPC protocol has no authentication, so the server listens on
loopback only and members reach it through this relay:

    llama.cpp (node child) -> Forwarder 127.0.0.1:eph -> [TCP, this protocol] -> RelayServer -> 127.0.0.1:rpc

Handshake (both sides prove they hold the swarm's rpc_key; nothing secret is sent):

    C -> S  MAGIC, client nonce, client peer id
    S -> C  server nonce, worker peer id
    C -> S  HMAC(rpc_key, "client" | transcript)
    S -> C  status byte; OK + HMAC(rpc_key, "server" | transcript), else a reason

The transcript binds both nonces and both peer ids. Then every byte travels in
AES-GCM frames under per-session keys derived from both nonces; a PING frame
goes out after a second of silence, and a side that hears nothing for
IDLE_TIMEOUT closes, so a frozen or vanished peer is noticed.

The lease: while one node has a session open, the relay refuses every other
node, with the holder's id as the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import struct
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger(__name__)

MAGIC = b"P2PAIRPC\x01"
NONCE_BYTES = 32
MAC_BYTES = 32
MAX_ID_BYTES = 128
HANDSHAKE_TIMEOUT = 5.0
PING_INTERVAL = 1.0
IDLE_TIMEOUT = 4.0
MAX_FRAME = 256 * 1024
_DATA, _PING = 0, 1
_OK, _REFUSED = 0, 1


class RelayRefused(ConnectionError):
    """The worker would not open a session; the message says why."""


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


async def _read_id(reader: asyncio.StreamReader) -> str:
    (size,) = struct.unpack("!H", await reader.readexactly(2))
    if size > MAX_ID_BYTES:
        raise ConnectionError("peer id too long")
    return (await reader.readexactly(size)).decode()


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

    def _nonce(self) -> bytes:
        self._counter += 1
        return self._counter.to_bytes(12, "big")

    def seal(self, kind: int, payload: bytes) -> bytes:
        body = self._cipher.encrypt(self._nonce(), bytes([kind]) + payload, None)
        return struct.pack("!I", len(body)) + body

    async def open(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        """The next frame; EOFError when the peer closed cleanly between frames."""
        try:
            header = await reader.readexactly(4)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            raise EOFError from None
        (size,) = struct.unpack("!I", header)
        if size > MAX_FRAME + 64:
            raise ConnectionError("oversized frame")
        plain = self._cipher.decrypt(self._nonce(), await reader.readexactly(size), None)
        return plain[0], plain[1:]


@dataclass
class Traffic:
    """Bytes moved through one relay, as the worker reports them."""

    sessions: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


async def pipe(
    plain: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    sealed: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    send: _Sealer,
    receive: _Sealer,
    traffic: Traffic | None = None,
) -> bool:
    """Move bytes both ways until either side ends, stalls past IDLE_TIMEOUT or tampers.

    Returns True when the sealed (remote) side hung up first.
    """
    plain_reader, plain_writer = plain
    sealed_reader, sealed_writer = sealed
    last_sent = asyncio.get_running_loop().time()

    def send_frame(kind: int, payload: bytes) -> None:
        nonlocal last_sent
        sealed_writer.write(send.seal(kind, payload))
        last_sent = asyncio.get_running_loop().time()

    async def outbound() -> None:
        while data := await plain_reader.read(MAX_FRAME):
            send_frame(_DATA, data)
            if traffic:
                traffic.bytes_out += len(data)
            await sealed_writer.drain()

    async def inbound() -> None:
        while True:
            try:
                kind, data = await asyncio.wait_for(receive.open(sealed_reader), IDLE_TIMEOUT)
            except EOFError:
                return
            if kind == _DATA:
                plain_writer.write(data)
                if traffic:
                    traffic.bytes_in += len(data)
                await plain_writer.drain()

    async def keepalive() -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PING_INTERVAL / 2)
            if loop.time() - last_sent >= PING_INTERVAL:
                send_frame(_PING, b"")
                await sealed_writer.drain()

    tasks = [asyncio.create_task(coro) for coro in (outbound(), inbound(), keepalive())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        remote_closed = tasks[1].done()
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                if isinstance(exc, asyncio.TimeoutError):
                    raise ConnectionError(f"no traffic for {IDLE_TIMEOUT:.0f} s: the peer is frozen or gone")
                raise ConnectionError(f"the relay connection failed: {exc!r}")
        return remote_closed
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in (plain_writer, sealed_writer):
            writer.close()


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
    """The worker's side: authenticates nodes and pipes them to the loopback RPC server."""

    key: bytes = field(repr=False)
    peer_id: str
    rpc_port: Callable[[], int]
    on_change: Callable[[], None] = lambda: None
    lease: Lease = field(default_factory=Lease)
    traffic: Traffic = field(default_factory=Traffic)
    refused: int = 0
    _server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            client_id, send, receive = await asyncio.wait_for(self._handshake(reader, writer), HANDSHAKE_TIMEOUT)
        except (OSError, EOFError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
            self.refused += 1
            log.info("refused a relay connection from %s: %s", writer.get_extra_info("peername"), exc)
            writer.close()
            return
        try:
            local = await asyncio.open_connection("127.0.0.1", self.rpc_port())
        except OSError as exc:
            log.warning("the RPC server is unreachable: %s", exc)
            self.lease.release()
            writer.close()
            return
        self.traffic.sessions += 1
        self.on_change()
        try:
            await pipe(local, (reader, writer), send, receive, self.traffic)
        except ConnectionError as exc:
            log.info("session of %s ended: %s", client_id, exc)
        finally:
            self.lease.release()
            self.on_change()

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[str, _Sealer, _Sealer]:
        if await reader.readexactly(len(MAGIC)) != MAGIC:
            raise ConnectionError("not a p2pai relay client")
        client_nonce = await reader.readexactly(NONCE_BYTES)
        client_id = await _read_id(reader)
        server_nonce = os.urandom(NONCE_BYTES)
        writer.write(server_nonce + _pack_id(self.peer_id))
        await writer.drain()
        transcript = client_nonce + server_nonce + _pack_id(client_id) + _pack_id(self.peer_id)
        if not hmac.compare_digest(await reader.readexactly(MAC_BYTES), _mac(self.key, b"client", transcript)):
            writer.write(bytes([_REFUSED]) + _pack_id("authentication failed"))
            await writer.drain()
            raise ConnectionError("bad token proof")
        reason = self.lease.acquire(client_id)
        if reason is not None:
            writer.write(bytes([_REFUSED]) + _pack_id(reason))
            await writer.drain()
            raise ConnectionError(f"{client_id}: {reason}")
        writer.write(bytes([_OK]) + _mac(self.key, b"server", transcript))
        await writer.drain()
        to_server, to_client = _session_keys(self.key, transcript)
        return client_id, _Sealer(to_client), _Sealer(to_server)


async def connect(
    endpoint: Endpoint, key: bytes, client_id: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, _Sealer, _Sealer]:
    """Open an authenticated session to a worker's relay; raises RelayRefused or OSError."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(endpoint.host, endpoint.port), HANDSHAKE_TIMEOUT)
    try:
        return await asyncio.wait_for(_client_handshake(reader, writer, endpoint, key, client_id), HANDSHAKE_TIMEOUT)
    except asyncio.IncompleteReadError:
        writer.close()
        raise RelayRefused(f"{endpoint.host}:{endpoint.port} closed the connection during the handshake") from None
    except BaseException:
        writer.close()
        raise


async def _client_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, endpoint: Endpoint, key: bytes, client_id: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, _Sealer, _Sealer]:
    client_nonce = os.urandom(NONCE_BYTES)
    writer.write(MAGIC + client_nonce + _pack_id(client_id))
    await writer.drain()
    server_nonce = await reader.readexactly(NONCE_BYTES)
    worker_id = await _read_id(reader)
    if worker_id != endpoint.peer_id:
        raise RelayRefused(f"expected worker {endpoint.peer_id}, found {worker_id}")
    transcript = client_nonce + server_nonce + _pack_id(client_id) + _pack_id(worker_id)
    writer.write(_mac(key, b"client", transcript))
    await writer.drain()
    if (await reader.readexactly(1))[0] != _OK:
        raise RelayRefused(f"worker {worker_id} refused: {await _read_id(reader)}")
    if not hmac.compare_digest(await reader.readexactly(MAC_BYTES), _mac(key, b"server", transcript)):
        raise RelayRefused(f"worker {worker_id} does not hold this swarm's token")
    to_server, to_client = _session_keys(key, transcript)
    return reader, writer, _Sealer(to_server), _Sealer(to_client)


class Forwarder:
    """The node's side: a loopback port for llama.cpp that tunnels each connection to one worker.

    `on_lost(endpoint, reason)` runs before the llama.cpp side is closed, so
    the owner learns which worker failed before llama.cpp aborts.
    """

    def __init__(
        self, endpoint: Endpoint, key: bytes, client_id: str, on_lost: Callable[[Endpoint, str], Awaitable[None] | None]
    ) -> None:
        self.endpoint = endpoint
        self._key = key
        self._client_id = client_id
        self._on_lost = on_lost
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            remote_reader, remote_writer, send, receive = await connect(self.endpoint, self._key, self._client_id)
            if await pipe((reader, writer), (remote_reader, remote_writer), send, receive):
                await self._lost("the worker closed the connection")
        except (OSError, ValueError) as exc:  # ConnectionError and RelayRefused are OSErrors
            await self._lost(str(exc) or repr(exc))
        finally:
            writer.close()


    async def _lost(self, reason: str) -> None:
        result = self._on_lost(self.endpoint, reason)
        if result is not None:
            await result


async def probe(endpoint: Endpoint, key: bytes, client_id: str) -> str:
    """Health check: authenticate, then ask the RPC server behind the relay for its protocol version."""
    from .server import rpc_hello

    failures: list[str] = []
    forwarder = Forwarder(endpoint, key, client_id, lambda _, reason: failures.append(reason))
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
