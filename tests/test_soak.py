"""Clients that read slowly, or stop reading, on a real node."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.e2e


def stalled_stream(url: str, body: dict) -> socket.socket:
    """A streamed request whose client never reads: a 4 KiB receive buffer, left full."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window follows it
    sock.connect((host, int(port)))
    data = json.dumps(body).encode()
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_a_client_that_stops_reading_holds_no_place_in_its_models_queue(start_node, tmp_path: Path) -> None:
    """Its answer, once generated, waits for it in the node; the model serves the next requests."""
    models = tmp_path / "models"
    models.mkdir()
    write_tiny_gguf(models / "one.gguf", seed=2)
    (models / "one.yaml").write_text("name: one\nparameters:\n  model: one.gguf\n  temperature: 0\n"
                                     "context_size: 2048\nparallel: 1\nmax_queue: 1\n")
    node = start_node("--models-dir", str(models), "--preload", "--threads", "1", "--no-default-model")
    # 16 x 1000 tokens with 20 top logprobs each: about 24 MB of events, far more than the
    # kernel's socket buffers take, so the node's writer waits for a reader that never comes.
    heavy = {"model": "one", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000, "n": 16,
             "logprobs": True, "top_logprobs": 20, "stream": True}
    stalled = [stalled_stream(node.url, heavy) for _ in range(2)]  # as many as the slot and the queue hold
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until the model is done with both (1-2 s on 2 cores)
            stats = httpx.get(node.url + "/system", timeout=5).json()["loaded_models"][0]
            if stats["in_flight"] == stats["queued"] == 0 and stats["decode_tps"]:
                break
            time.sleep(0.2)
        answer = httpx.post(node.url + "/v1/completions", json={"model": "one", "prompt": "hi", "max_tokens": 4},
                            timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] == 4
    finally:
        for sock in stalled:
            sock.close()
