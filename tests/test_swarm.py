"""`p2pai start` nodes form a swarm: real processes, 127.0.0.1 only."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from p2pai.token import new_token

JOIN_LIMIT = 2.0
DETECTION_LIMIT = 3.0


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if condition():
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise AssertionError(f"not within {timeout} s")


def online_peers(node) -> dict[str, dict]:
    return {n["id"]: n for n in node.swarm()["federated_nodes"] if not n["self"] and n["online"]}


def known_ids(node) -> set[str]:
    return {n["id"] for n in node.swarm()["federated_nodes"] if not n["self"]}


@pytest.fixture
def token() -> str:
    return new_token()


def test_three_nodes_join_by_bootstrap_and_see_each_others_models(start_node, models_dir: Path, token: str) -> None:
    a = start_node("--token", token, "--model", str(models_dir / "tiny.gguf"), name="a")
    seed = a.bootstrap_addr()
    b = start_node("--token", token, "--bootstrap", seed, "--model", str(models_dir / "tiny-b.gguf"), name="b",
                   ready=False)
    c = start_node("--token", token, "--bootstrap", seed, "--name", "node-c", name="c", ready=False)
    b.wait_ready()
    c.wait_ready()
    nodes = [a, b, c]
    ids = {node.peer_id(): node for node in nodes}
    assert len(ids) == 3
    for node in nodes:
        others = set(ids) - {node.peer_id()}
        wait_for(lambda node=node, others=others: set(online_peers(node)) == others, JOIN_LIMIT)
    # Models announced by one are visible on the others, and names are announced too.
    view_from_c = online_peers(c)
    assert view_from_c[a.peer_id()]["models"] == ["tiny"]
    assert view_from_c[b.peer_id()]["models"] == ["tiny-b"]
    assert online_peers(a)[c.peer_id()]["name"] == "node-c"
    swarm = a.swarm()
    assert swarm["mlx_nodes"] == [] and swarm["llama_cpp_nodes"] == []
    me = swarm["self"]
    assert me["self"] is True and me["addrs"] == [f"/ip4/127.0.0.1/tcp/{a.p2p_port}/p2p/{me['id']}"]
    assert me["lastSeen"].endswith("Z") and me["serviceID"] == "p2pai-federated"
    # A loaded model shows as loaded on the other nodes.
    httpx.post(a.url + "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2}, timeout=30)
    wait_for(lambda: online_peers(b)[a.peer_id()]["loaded"] == ["tiny"], 2.0)


def test_two_nodes_find_each_other_by_mdns_on_loopback(start_node, tiny_path: Path, token: str) -> None:
    a = start_node("--token", token, "--model", str(tiny_path), name="a", mdns=True)
    b = start_node("--token", token, "--model", str(tiny_path), name="b", mdns=True)
    wait_for(lambda: b.peer_id() in online_peers(a) and a.peer_id() in online_peers(b), 10.0)


def test_a_node_of_another_swarm_never_appears(start_node, tiny_path: Path, token: str) -> None:
    a = start_node("--token", token, "--model", str(tiny_path), name="a", mdns=True)
    stranger = start_node("--token", new_token(), "--bootstrap", a.bootstrap_addr(), "--model", str(tiny_path),
                          name="stranger", mdns=True)
    friend = start_node("--token", token, "--bootstrap", a.bootstrap_addr(), "--model", str(tiny_path),
                        name="friend", mdns=True)
    wait_for(lambda: friend.peer_id() in online_peers(a), JOIN_LIMIT)
    time.sleep(1.0)  # a few announcement rounds and mDNS answers
    assert stranger.peer_id() not in known_ids(a) | known_ids(friend)
    assert known_ids(stranger) == set()
    assert a.swarm()["self"]["stats"]["accepted"] > 0


@pytest.mark.parametrize("how", ["kill", "freeze"])
def test_a_dead_or_frozen_node_goes_offline_and_comes_back(start_node, tiny_path: Path, token: str, how: str) -> None:
    a = start_node("--token", token, "--model", str(tiny_path), name="a")
    b = start_node("--token", token, "--bootstrap", a.bootstrap_addr(), "--model", str(tiny_path), name="b")
    b_id = b.peer_id()
    wait_for(lambda: b_id in online_peers(a), JOIN_LIMIT)
    b.proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
    wait_for(lambda: b_id not in online_peers(a), DETECTION_LIMIT)
    assert b_id in known_ids(a)  # offline, not forgotten
    if how == "kill":
        b.proc.wait(5)
        b.restart()
        b.wait_ready()
        assert b.peer_id() == b_id
    else:
        b.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: b_id in online_peers(a), 5.0)


def test_with_a_lowered_threshold_requests_route_to_a_peers_model(start_node, models_dir: Path, token: str) -> None:
    """--small-swarm 2: three nodes run the large-swarm protocol (ring heartbeats, relayed announcements).
    C joins through A and learns of B, and of B's model, from them; its requests reach B."""
    lowered = ("--token", token, "--small-swarm", "2", "--threads", "1")
    a = start_node(*lowered, "--no-default-model", "--models-dir", str(models_dir / "none"), name="a")
    seed = ("--bootstrap", a.bootstrap_addr())
    b = start_node(*lowered, *seed, "--model", str(models_dir / "tiny.gguf"), name="b", ready=False)
    c = start_node(*lowered, *seed, "--no-default-model", "--models-dir", str(models_dir / "none"), name="c",
                   ready=False)
    b.wait_ready()
    c.wait_ready()
    ids = {node.peer_id() for node in (a, b, c)}
    for node in (a, b, c):
        wait_for(lambda node=node: set(online_peers(node)) == ids - {node.peer_id()}, 10.0)
        assert node.swarm()["self"]["stats"]["small_swarm"] is False
    wait_for(lambda: online_peers(c)[b.peer_id()]["models"] == ["tiny"], 10.0)
    answer = httpx.post(c.url + "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 4}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-P2PAI-Served-By"] == b.peer_id()
    assert answer.json()["usage"]["completion_tokens"] == 4
