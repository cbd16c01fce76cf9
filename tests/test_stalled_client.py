"""A streaming client that stops reading is let go after api/sse.SEND_TIMEOUT: its handler, its
generation and its connection end instead of waiting for it forever."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from aiohttp.test_utils import TestClient

from p2pai.api import sse

BODY = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "the people"}], "max_tokens": 400, "n": 8,
                   "stream": True, "logprobs": True, "top_logprobs": 20, "temperature": 1.0}).encode()
"""About 2 kB per event and choice (20 alternatives each), 8 choices: far more than the socket buffers
between the two sides hold (without the timeout, the whole 5 MB stream waits for the client)."""


def _stalled_stream(host: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect((host, port))
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
    sock = await asyncio.to_thread(_stalled_stream, client.server.host, client.server.port)
    try:
        await asyncio.sleep(3.0)  # generation fills the buffers, then the server waits for the client
        received, closed = await asyncio.to_thread(_read_to_end, sock, 10.0)
    finally:
        sock.close()
    assert received.startswith(b"HTTP/1.1 200")
    assert len(received) > 50_000  # it did stream until the buffers were full
    assert closed, (len(received), received[-300:])
    assert b"data: [DONE]" not in received  # cut off: the server did not wait for the stalled client
    answer = await client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 4})
    assert answer.status == 200  # and the model serves the next client
