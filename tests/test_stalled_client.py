"""A streaming client that stops reading is let go after api/sse.SEND_TIMEOUT: its handler, its
generation and its connection end instead of waiting for it forever."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time

import psutil
import pytest
from aiohttp.test_utils import TestClient

from p2pai.api import sse
from p2pai.api.state import STATE

BODY = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "the people"}], "max_tokens": 400, "n": 8,
                   "stream": True, "logprobs": True, "top_logprobs": 20, "temperature": 1.0}).encode()
"""About 2 kB per event and choice (20 alternatives each), 8 choices: far more than the socket buffers
between the two sides hold (without the timeout, the whole 5 MB stream waits for the client)."""

SMALL_BUFFER = 8192
"""Both kernel buffers of the connection are kept this small (the client's receive buffer, the server's
send buffer, which the kernel would otherwise grow to megabytes): the server's writes block after a few
events, however slowly a loaded machine generates them."""


def _server_side(client_sock: socket.socket, server_port: int, seconds: float) -> socket.socket:
    """A duplicate of the server's end of ``client_sock``'s connection (the server runs in this process)."""
    here = client_sock.getsockname()[1]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for conn in psutil.Process().net_connections(kind="tcp"):
            if conn.laddr and conn.raddr and conn.laddr.port == server_port and conn.raddr.port == here:
                return socket.socket(fileno=os.dup(conn.fd))
        time.sleep(0.01)
    raise AssertionError("the server never accepted the connection")


def _stalled_stream(host: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)  # before connect: a small window
    sock.connect((host, port))
    with _server_side(sock, port, 10.0) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)
    return sock


def _read_to_end(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """Everything the server sends, and whether it closed the connection within ``seconds``."""
    received = bytearray()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return bytes(received), True
        if not data:
            return bytes(received), True
        received += data
    return bytes(received), False


async def test_a_client_that_stops_reading_is_let_go(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "SEND_TIMEOUT", 0.5)
    assert client.server.host is not None and client.server.port is not None
    manager = client.server.app[STATE].manager
    sock = await asyncio.to_thread(_stalled_stream, client.server.host, client.server.port)
    try:
        started = ended = False
        for _ in range(1200):  # 60 s at most: the buffers fill, a write waits 0.5 s, the generation is cut
            in_flight = manager.stats("tiny").in_flight
            started, ended = started or in_flight > 0, started and in_flight == 0
            if ended:
                break
            await asyncio.sleep(0.05)
        assert ended, "the stalled stream's generation never ended"
        # A fast machine may have generated everything before a write had waited 0.5 s: the writes
        # wait all the same (5 MB cannot fit the buffers), so the timeout fires within this pause.
        await asyncio.sleep(6 * sse.SEND_TIMEOUT)
        received, closed = await asyncio.to_thread(_read_to_end, sock, 10.0)
    finally:
        sock.close()
    assert received.startswith(b"HTTP/1.1 200")
    assert received.count(b"data: {") >= 4  # it streamed until the buffers were full
    assert closed, (len(received), received[-300:])
    assert b"data: [DONE]" not in received  # cut off: the server did not wait for the stalled client
    answer = await client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 4})
    assert answer.status == 200  # and the model serves the next client
