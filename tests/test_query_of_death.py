"""No query of death across the swarm: real `p2pai start` processes on 127.0.0.1.

A routes only; B, C and D all serve `tiny`. A request that crashes its model
is answered with that crash, not tried elsewhere; a request whose node dies
while working on it goes to one more node at most.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from conftest import NodeProcess
from test_containment import crash, model_pid
from test_swarm import online_peers, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def swarm(start_node, models_dir: Path) -> dict[str, NodeProcess]:
    from p2pai.token import new_token

    token = new_token()
    a = start_node("--token", token, "--no-default-model", "--models-dir", str(models_dir / "none"), name="a")
    common = ("--token", token, "--bootstrap", a.bootstrap_addr(), "--threads", "1", "--preload",
              "--model", str(models_dir / "tiny.gguf"))
    others = {name: start_node(*common, "--name", name, name=name, ready=False) for name in "bcd"}
    for node in others.values():
        node.wait_ready()
    wait_for(lambda: len(online_peers(a)) == 3, 10.0)
    return {"a": a, **others}


def peer_metrics(entry: NodeProcess) -> dict[str, dict]:
    """What the entry counted per peer it forwarded to, by peer name."""
    swarm = httpx.get(entry.url + "/api/p2p", timeout=5).json()
    return {n["name"]: n["metrics"] or {"requests": 0, "lost": 0, "crashed": 0} for n in swarm["federated_nodes"]}


def serving(nodes: list[NodeProcess], timeout: float = 10.0) -> NodeProcess:
    """The node whose `tiny` has a request in flight now."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            loaded = httpx.get(node.url + "/system", timeout=2).json()["loaded_models"]
            if any(m["in_flight"] for m in loaded):
                return node
        time.sleep(0.01)
    raise AssertionError("no node is serving the request")


@contextlib.contextmanager
def frozen_models(nodes: list[NodeProcess]) -> Iterator[dict[str, int]]:
    """Every node's `tiny` process stopped, so a request surely waits in whichever node gets it;
    yields their pids by node URL and resumes the survivors afterwards."""
    pids = {node.url: model_pid(node, "tiny") for node in nodes}
    for pid in pids.values():
        os.kill(pid, signal.SIGSTOP)
    try:
        yield pids
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def send_in_background(entry: NodeProcess, body: dict) -> tuple[threading.Thread, list[httpx.Response]]:
    answer: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: answer.append(
        httpx.post(entry.url + "/v1/completions", json=body, timeout=60)))
    sender.start()
    return sender, answer


def test_a_request_that_crashes_its_model_is_not_tried_on_another_node(swarm) -> None:
    nodes = [swarm[n] for n in "bcd"]
    with frozen_models(nodes) as pids:
        sender, answer = send_in_background(swarm["a"], {"model": "tiny", "prompt": "hi", "max_tokens": 8})
        victim = serving(nodes)
        crash(pids[victim.url], signal.SIGSEGV)
        sender.join(20)
    assert answer[0].status_code == 500
    assert answer[0].json()["error"]["code"] == "model_crashed"
    metrics = peer_metrics(swarm["a"])
    name = next(n for n in "bcd" if swarm[n] is victim)
    assert metrics[name]["crashed"] == 1 and metrics[name]["requests"] == 1, metrics
    assert sum(metrics[n]["requests"] for n in "bcd" if n != name) == 0  # tried nowhere else
    # The victim serves again (its model restarted); the entry never gave up on it.
    api = openai.OpenAI(base_url=victim.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    assert api.completions.create(model="tiny", prompt="hello", max_tokens=2).choices[0].text


def test_a_request_whose_nodes_die_under_it_goes_to_one_more_node_only(swarm) -> None:
    nodes = [swarm[n] for n in "bcd"]
    with frozen_models(nodes):
        sender, answer = send_in_background(swarm["a"], {"model": "tiny", "prompt": "hi", "max_tokens": 8})
        killed = []
        for _ in range(2):  # the node holding the request dies; then the one it was retried on
            victim = serving([n for n in nodes if n not in killed])
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(5)
            killed.append(victim)
        sender.join(20)
    assert answer[0].status_code == 503
    assert answer[0].json()["error"]["code"] == "no_node_available"
    metrics = peer_metrics(swarm["a"])
    names = [n for n in "bcd" if swarm[n] in killed]
    assert [metrics[n]["lost"] for n in names] == [1, 1]
    spared = next(n for n in "bcd" if n not in names)
    assert metrics[spared]["requests"] == 0
    assert httpx.get(swarm["a"].url + "/healthz", timeout=2).status_code == 200


def test_a_stream_is_continued_once_then_ends_with_an_explicit_error(swarm) -> None:
    api = openai.OpenAI(base_url=swarm["a"].url + "/v1", api_key="unused", max_retries=0, timeout=30)
    raw = api.completions.with_raw_response.create(model="tiny", prompt="the people", max_tokens=3000,
                                                   stream=True, temperature=0)
    by_id = {swarm[n].peer_id(): swarm[n] for n in "bcd"}
    first = by_id[raw.headers["X-P2PAI-Served-By"]]
    chunks = iter(raw.parse())
    next(chunks)
    # Whichever continues, it stays in the middle. Their pids are kept: once its node is killed, a
    # stopped model process can only end (its orphan check) when it runs again.
    stopped = [model_pid(node, "tiny") for node in by_id.values() if node is not first]
    try:
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        first.proc.send_signal(signal.SIGSTOP)
        first.proc.send_signal(signal.SIGKILL)
        continuing = serving([n for n in by_id.values() if n is not first])
        continuing.proc.send_signal(signal.SIGKILL)
        continuing.proc.wait(5)
        with pytest.raises(openai.APIError) as broken:
            for _ in chunks:
                pass
        assert broken.value.body["code"] == "peer_failed"
        metrics = peer_metrics(swarm["a"])
        spared = next(n for n in "bcd" if swarm[n] not in (first, continuing))
        assert metrics[spared]["requests"] == 0
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
