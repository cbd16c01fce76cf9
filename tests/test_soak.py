"""A shortened run of bench/soak.py: 200 slow-reading streams on one real node.

The node's memory stays bounded (and a second soak reuses what the first took: no leak),
slow readers hold no decode slot, and other clients keep getting answers.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from tiny_gguf import write_tiny_gguf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import soak

pytestmark = pytest.mark.e2e

MB = 1_000_000
PEAK_GROWTH = 30 * MB
"""Measured: +6 to +7 MB of node RSS with 200 slow streams (the kernel's socket buffers hold what
they have not read). A node that kept the streams' chunks (tried: a list holding them) grew by
146 MB per round."""
ROUND_GROWTH = 10 * MB
"""The second soak reuses what the first took: measured under 1 MB more."""


async def test_slow_readers_leave_the_node_bounded_and_other_clients_answered(tmp_path: Path) -> None:
    config = soak.Config(clients=200, tokens=100, duration_s=15.0, settle_s=2.0, rounds=2)
    report = await soak.run(config, tmp_path)
    summary = report.render()
    for round_ in report.rounds:
        assert set(round_.slow) <= {"ok", "hung_up"} and round_.slow.get("ok", 0) == 100, summary
        assert round_.most_at_once >= 50, summary  # the slow streams were queued together
        for probe in round_.probes.values():
            assert probe["failed"] == 0 and probe["answered"] >= 5, summary
    growth = report.growth("node")
    assert max(growth) < PEAK_GROWTH, summary
    assert growth[1] - growth[0] < ROUND_GROWTH, summary


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
