"""The relay between a node and a worker, in one process on 127.0.0.1: an echo server stands in
for llama.cpp's RPC server, so every byte that goes in must come back out unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from p2pai.backends.rpc.relay import (
    _LENGTH,
    Credentials,
    Endpoint,
    Forwarder,
    RelayRefused,
    RelayServer,
    connect,
    probe,
)
from p2pai.identity import Identity
from rpc_helpers import Impostor

KEY = os.urandom(32)
WORKER = Credentials(Identity.generate(), KEY)
NODE = Credentials(Identity.generate(), KEY)


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


def connector(port: int) -> Callable[[], Awaitable[socket.socket]]:
    """How the relay reaches the server under test: a new connection to 127.0.0.1:`port`."""

    async def connect() -> socket.socket:
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return sock

    return connect


@pytest.fixture
async def relay(echo_port: int) -> AsyncIterator[tuple[RelayServer, Endpoint]]:
    server = RelayServer(WORKER, connector(echo_port))
    port = await server.start("127.0.0.1", 0)
    yield server, Endpoint(WORKER.peer_id, "127.0.0.1", port)
    await server.stop()


async def test_bytes_cross_unchanged_both_ways_with_a_slow_reader(relay: tuple[RelayServer, Endpoint]) -> None:
    """20 MB written at once, before the session is even open, read back slowly: nothing is lost
    or reordered, and the relay holds back instead of buffering everything (backpressure)."""
    server, endpoint = relay
    lost: list[str] = []
    forwarder = Forwarder(endpoint, NODE, lambda _, reason: lost.append(reason))
    reader, writer = await asyncio.open_connection("127.0.0.1", await forwarder.start())
    payload = os.urandom(20 * 2**20)
    writer.write(payload)
    received = bytearray()
    deadline = asyncio.get_running_loop().time() + 60
    while len(received) < len(payload) and asyncio.get_running_loop().time() < deadline:
        received += await asyncio.wait_for(reader.read(2**20), 10)
        await asyncio.sleep(0.005)
    assert bytes(received) == payload
    assert server.traffic.bytes_in == server.traffic.bytes_out == len(payload)
    writer.close()
    await forwarder.stop()
    assert not lost


async def test_a_forged_frame_ends_the_session(relay: tuple[RelayServer, Endpoint]) -> None:
    server, endpoint = relay
    link, send, _ = await connect(endpoint, NODE)
    link.write(send.seal(0, b"genuine"))
    link.write(_LENGTH.pack(40) + os.urandom(40))
    await asyncio.wait_for(link.closed, 5)
    for _ in range(50):  # the lease is released as the session ends
        if server.lease.holder is None:
            break
        await asyncio.sleep(0.02)
    assert server.lease.holder is None
    assert server.traffic.bytes_in == len(b"genuine")


async def test_a_wrong_key_is_refused_before_any_byte_reaches_the_server(relay: tuple[RelayServer, Endpoint]) -> None:
    server, endpoint = relay
    with pytest.raises(ConnectionError, match="authentication failed"):
        await connect(endpoint, Credentials(NODE.identity, os.urandom(32)))
    assert server.refused == 1 and server.traffic.sessions == 0


async def test_a_worker_that_cannot_sign_for_its_peer_id_is_not_used(echo_port: int) -> None:
    impostor = RelayServer(Credentials(Impostor(WORKER.peer_id, Identity.generate()), KEY),  # type: ignore[arg-type]
                           connector(echo_port))
    port = await impostor.start("127.0.0.1", 0)
    try:
        with pytest.raises(ConnectionError, match="does not prove this swarm's token and its peer id"):
            await connect(Endpoint(WORKER.peer_id, "127.0.0.1", port), NODE)
    finally:
        await impostor.stop()


async def test_the_forwarder_serves_only_connections_of_its_own_process(relay: tuple[RelayServer, Endpoint]) -> None:
    """llama.cpp's client runs in the forwarder's process; another local process gets nothing."""
    server, endpoint = relay
    lost: list[str] = []
    forwarder = Forwarder(endpoint, NODE, lambda _, reason: lost.append(reason))
    port = await forwarder.start()
    try:
        script = ("import socket, sys\n"
                  "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10)\n"
                  "try:\n    s.sendall(b'hello'); print(len(s.recv(100)))\n"
                  "except ConnectionResetError:\n    print(0)\n")
        foreign = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", script, str(port)],
                                          capture_output=True, text=True, timeout=30)
        assert foreign.stdout.strip() == "0", foreign  # closed without a byte
        assert forwarder.refused == 1 and server.traffic.sessions == 0 and server.lease.holder is None
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # this process: served
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"hello"
        writer.close()
    finally:
        await forwarder.stop()
    assert not lost


async def test_a_node_not_admitted_is_refused_with_the_reason(echo_port: int) -> None:
    allowed = Credentials(Identity.generate(), KEY)
    server = RelayServer(WORKER, connector(echo_port), admits=lambda peer_id: peer_id == allowed.peer_id)
    endpoint = Endpoint(WORKER.peer_id, "127.0.0.1", await server.start("127.0.0.1", 0))
    try:
        with pytest.raises(RelayRefused, match="admits only the nodes named by its --allow-node"):
            await probe(endpoint, NODE)
        assert server.refused == 1 and server.traffic.sessions == 0
        link, _, _ = await connect(endpoint, allowed)
        link.close()
    finally:
        await server.stop()


async def test_a_session_without_traffic_ends_after_the_lease_idle_time(echo_port: int) -> None:
    server = RelayServer(WORKER, connector(echo_port), lease_idle=1.5)
    endpoint = Endpoint(WORKER.peer_id, "127.0.0.1", await server.start("127.0.0.1", 0))
    lost: list[str] = []
    forwarder = Forwarder(endpoint, NODE, lambda _, reason: lost.append(reason))
    reader, writer = await asyncio.open_connection("127.0.0.1", await forwarder.start())
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(4):  # traffic keeps the lease
            await asyncio.sleep(0.5)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        assert server.lease.holder == NODE.peer_id
        idle_since = loop.time()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # then silence ends it
        assert 1.4 <= loop.time() - idle_since < 4 and loop.time() - started > 3
        assert lost == ["the worker ended the session: the lease ended after 1.5 s without traffic"]
        for _ in range(50):
            if server.lease.holder is None:
                break
            await asyncio.sleep(0.02)
        assert server.lease.holder is None
    finally:
        writer.close()
        await forwarder.stop()
        await server.stop()
