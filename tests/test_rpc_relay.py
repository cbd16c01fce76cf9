"""The relay between a node and a worker, in one process on 127.0.0.1: an echo server stands in
for llama.cpp's RPC server, so every byte that goes in must come back out unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import AsyncIterator

import pytest
from rpc_helpers import Impostor

from p2pai.backends.rpc.relay import _LENGTH, Credentials, Endpoint, Forwarder, RelayServer, connect
from p2pai.identity import Identity

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


@pytest.fixture
async def relay(echo_port: int) -> AsyncIterator[tuple[RelayServer, Endpoint]]:
    server = RelayServer(WORKER, lambda: echo_port)
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
                           lambda: echo_port)
    port = await impostor.start("127.0.0.1", 0)
    try:
        with pytest.raises(ConnectionError, match="does not prove this swarm's token and its peer id"):
            await connect(Endpoint(WORKER.peer_id, "127.0.0.1", port), NODE)
    finally:
        await impostor.stop()
