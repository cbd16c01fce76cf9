"""Probing before placing, with real `p2pai start` processes on 127.0.0.1 (issue #13).

Above --probe-above nodes the entry node asks candidates for their current figures (GET
/p2p/figures over the peer data plane) before sending; a candidate that does not answer costs
at most --probe-timeout and keeps its announced figures. Here the threshold is 1, so a swarm of
three probes: A routes only, B and C both have model `x` loaded with one slot.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import httpx
import openai

from p2pai.token import new_token
from test_load_spreading import x_models
from test_swarm import online_peers, wait_for

PROBE_TIMEOUT = 1.0


def probes(node, outcome: str) -> float:
    """p2pai_peer_probes_total{outcome=...} of ``node`` (0 before the first)."""
    text = httpx.get(node.url + "/metrics", timeout=5).text
    found = re.search(rf'^p2pai_peer_probes_total{{outcome="{outcome}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def last_trace(node) -> dict:
    return httpx.get(node.url + "/api/traces", params={"limit": 1}, timeout=5).json()[0]


def test_the_entry_asks_candidates_and_a_frozen_one_costs_at_most_the_probe_timeout(
        start_node, models_dir: Path, tmp_path: Path) -> None:
    config = x_models(tmp_path, models_dir, "context_size: 4096\nparallel: 1\n")
    token = new_token()
    probing = {"P2PAI_PROBE_ABOVE": "1", "P2PAI_PROBE_TIMEOUT": str(PROBE_TIMEOUT)}
    a = start_node("--token", token, "--no-default-model", "--models-dir", str(models_dir / "none"), name="a",
                   env=probing)
    common = ("--token", token, "--bootstrap", a.bootstrap_addr(), "--threads", "1", "--models-dir", str(config),
              "--preload")
    b = start_node(*common, "--name", "b", name="b", ready=False, env=probing)
    c = start_node(*common, "--name", "c", name="c", ready=False, env=probing)
    b.wait_ready()
    c.wait_ready()
    names = {b.peer_id(): "b", c.peer_id(): "c"}
    wait_for(lambda: {names[p]: n["loaded"] for p, n in online_peers(a).items()} == {"b": ["x"], "c": ["x"]}, 10.0)
    api = openai.OpenAI(base_url=a.url + "/v1", api_key="unused", max_retries=0, timeout=30)

    def ask() -> str:
        raw = api.completions.with_raw_response.create(model="x", prompt="the people of", max_tokens=4)
        return names[raw.headers["X-P2PAI-Served-By"]]

    # B busy with its one slot, C frozen (still online in A's view for seconds: heartbeats time out
    # after 2 s). No answer can start the request at once, so the round waits for C until the
    # timeout; then B, whose figures are current, goes before C, whose figures are not.
    busy = threading.Thread(target=lambda: openai.OpenAI(base_url=b.url + "/v1", api_key="unused").completions
                            .create(model="x", prompt="the", max_tokens=3000, extra_body={"ignore_eos": True}))
    busy.start()
    wait_for(lambda: 'p2pai_model_slots_in_use{model="x"} 1.0' in httpx.get(b.url + "/metrics", timeout=5).text, 5.0)
    c.proc.send_signal(signal.SIGSTOP)
    try:
        assert ask() == "b"
    finally:
        c.proc.send_signal(signal.SIGCONT)
    trace = last_trace(a)
    assert [hop["name"] for hop in trace["hops"]] == ["b"]  # C was never sent the request
    before_b = trace["duration"] / 1e9 - trace["hops"][0]["upstream_ms"] / 1000  # probing, then forwarding
    assert PROBE_TIMEOUT * 0.9 <= before_b <= PROBE_TIMEOUT + 0.5, before_b
    busy.join(30)

    # B idle, C frozen: B's answer is enough, nobody waits for C.
    wait_for(lambda: "c" in {names[p] for p in online_peers(a)}, 10.0)
    c.proc.send_signal(signal.SIGSTOP)
    try:
        for _ in range(4):
            started = time.monotonic()
            assert ask() == "b"
            assert time.monotonic() - started < PROBE_TIMEOUT
            assert [hop["name"] for hop in last_trace(a)["hops"]] == ["b"]
    finally:
        c.proc.send_signal(signal.SIGCONT)
    assert probes(a, "answered") >= 5  # B's
    assert probes(a, "abandoned") >= 5  # C's, not waited for beyond the timeout or once B's answer was enough
