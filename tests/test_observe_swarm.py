"""Metrics, traces and `p2pai peers --watch` on a real two-node swarm (processes on 127.0.0.1): a request
enters at A, which has no model, and is served by B."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from metrics_helpers import Samples
from p2pai.token import new_token
from test_swarm import online_peers, wait_for

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def scrape(node) -> Samples:
    response = httpx.get(node.url + "/metrics", timeout=5)
    assert response.status_code == 200
    return Samples(response.text)


def test_metrics_traces_and_the_live_table_follow_a_forwarded_request(start_node, models_dir: Path) -> None:
    token = new_token()
    a = start_node("--token", token, "--no-default-model", "--models-dir", str(models_dir / "none"), name="a")
    watch = subprocess.Popen(
        [sys.executable, "-m", "p2pai", "peers", "--watch", "--interval", "0.2", "--url", a.url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "TTY_INTERACTIVE": "1", "TTY_COMPATIBLE": "1", "COLUMNS": "250"})
    try:
        b = start_node("--token", token, "--bootstrap", a.bootstrap_addr(), "--model", str(models_dir / "tiny.gguf"),
                       "--threads", "1", "--name", "watched-b", name="b")
        wait_for(lambda: len(online_peers(a)) == 1, 10.0)
        a_id, b_id = a.peer_id(), b.peer_id()
        before_a, before_b = scrape(a), scrape(b)
        generated = 0
        with httpx.Client(base_url=a.url, timeout=30) as client:
            answer = client.post("/v1/chat/completions", json=CHAT)
            assert answer.status_code == 200, answer.text
            assert answer.headers["X-P2PAI-Served-By"] == b_id
            generated += answer.json()["usage"]["completion_tokens"]
            answer = client.post("/v1/chat/completions",
                                 json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
            assert answer.status_code == 200, answer.text
            assert answer.headers["X-P2PAI-Served-By"] == b_id
            events = [json.loads(line[6:]) for line in answer.text.splitlines() if line.startswith("data: {")]
            generated += events[-1]["usage"]["completion_tokens"]
        after_a, after_b = scrape(a), scrape(b)
    finally:
        watch.send_signal(signal.SIGINT)
        output, _ = watch.communicate(timeout=10)

    def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    # The entry forwarded both, and timed the hop.
    assert moved(before_a, after_a, "p2pai_peer_forwarded_requests_total", peer=b_id) == 2
    assert moved(before_a, after_a, "p2pai_peer_added_latency_seconds_count", peer=b_id) == 2
    assert moved(before_a, after_a, "p2pai_peer_failures_total") == 0
    assert moved(before_a, after_a, "api_call_count", method="POST", path="/v1/chat/completions") == 2
    assert after_a.value("p2pai_model_requests_total") == 0  # it serves nothing itself
    assert after_a.value("p2pai_overlay_members_online") == 1
    assert after_a.value("p2pai_overlay_announcements_sent_total") > 0
    assert after_a.value("p2pai_overlay_announcements_received_total") > 0
    # The serving node counted the work.
    assert moved(before_b, after_b, "p2pai_model_requests_total", model="tiny", task="chat") == 2
    assert moved(before_b, after_b, "p2pai_model_completion_tokens_total", model="tiny") == generated > 0
    assert moved(before_b, after_b, "p2pai_model_time_to_first_token_seconds_count", model="tiny") == 2
    assert moved(before_b, after_b, "p2pai_peer_forwarded_requests_total") == 0

    # A's trace lists the hop to B; B's says who forwarded it.
    entry = httpx.get(a.url + "/api/traces", params={"limit": 2}, timeout=5).json()
    assert [t["response"]["status"] for t in entry] == [200, 200]
    for trace in entry:
        assert trace["served_by"] == b_id and trace["forwarded_by"] is None
        assert [(h["node"], h["name"], h["via"], h["status"]) for h in trace["hops"]] == [
            (b_id, "watched-b", "direct", 200)]
        assert trace["hops"][0]["upstream_ms"] > 0
    served = httpx.get(b.url + "/api/traces", params={"limit": 2}, timeout=5).json()
    assert [(t["forwarded_by"], t["served_by"], t["request"]["path"]) for t in served] == [
        (a_id, b_id, "/v1/chat/completions")] * 2

    # The live table was drawn again and again, and showed B once it joined.
    text = output.decode(errors="replace")
    assert watch.returncode == 0, text
    assert text.count("Swarm") >= 3, text
    assert "watched-b" in text
