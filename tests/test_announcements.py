"""Announcements are data from members, not orders: figures are checked, and an announced
endpoint is used only at the address the member's connection comes from."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from p2pai.swarm.endpoints import OwnAddresses, usable_hosts, vetted
from p2pai.swarm.payload import ModelOffer, NodePayload, PeerEndpoint, announced
from p2pai.swarm.view import WorkerOffer, parse_payload
from p2pai.token import new_token
from ports import free_port
from test_swarm import online_peers, wait_for

GOOD = {"models": [{"name": "m", "slots": 2, "decode_tps": 40.5, "size": 1000}],
        "capacity": {"slots": 2, "in_flight": 1, "queued": 0}, "memory": {"total": 2**34, "available": 2**33},
        "cpus": 4}


@pytest.mark.parametrize("bad", [
    '{"models": [{"name": "m", "decode_tps": NaN}]}',
    '{"models": [{"name": "m", "decode_tps": Infinity}]}',
    '{"models": [{"name": "m", "decode_tps": -1.0}]}',
    '{"models": [{"name": "m", "slots": -1}]}',
    '{"models": [{"name": "m", "in_flight": 1e400}]}',
    '{"models": [{"name": "m", "queued": 100000000000000000000}]}',
    '{"models": [{"name": "m", "size": -5}]}',
    '{"models": [{"name": ""}]}',
    '{"capacity": {"in_flight": -3}}',
    '{"memory": {"total": NaN}}',
    '{"memory": {"available": 1e30}}',
    '{"cpus": -1}',
])
def test_a_figure_that_is_not_finite_or_out_of_range_empties_the_payload_and_is_counted(bad: str) -> None:
    rejected: Counter[str] = Counter()
    assert NodePayload.parse(json.loads(bad), rejected) == NodePayload()
    assert rejected == {"payload": 1}
    assert NodePayload.parse(GOOD, rejected).models[0].decode_tps == 40.5 and rejected == {"payload": 1}


@pytest.mark.parametrize("bad", ['{"free_memory": NaN}', '{"free_memory": -1}', '{"threads": 1e9}',
                                 '{"served": {"bytes_in": -1}}', '{"served": {"bytes_in": Infinity}}', '"worker"'])
def test_a_worker_offer_with_a_bad_figure_is_no_worker(bad: str) -> None:
    rejected: Counter[str] = Counter()
    _, worker = parse_payload({"worker": json.loads(bad)}, rejected)
    assert worker is None and rejected == {"worker": 1}
    assert WorkerOffer.parse({"free_memory": 2**30, "served": {"bytes_in": 5}}) is not None


@pytest.mark.parametrize("endpoint", [{"hosts": ["127.0.0.1"], "port": 70000}, {"hosts": "127.0.0.1", "port": 1},
                                      {"hosts": [5], "port": 1}, {"hosts": ["x" * 100], "port": 1}, "garbage"])
def test_a_malformed_endpoint_costs_only_the_endpoint(endpoint: object) -> None:
    rejected: Counter[str] = Counter()
    payload = NodePayload.parse({**GOOD, "endpoint": endpoint}, rejected)
    assert payload.endpoint is None and [m.name for m in payload.models] == ["m"] and not rejected


@pytest.mark.parametrize(("announced", "tasks"), [
    ({}, ["chat", "completion"]),  # a node that predates tasks: llama.cpp text generation
    ({"embeddings": True}, ["chat", "completion", "embeddings"]),
    ({"tasks": ["rerank"]}, ["rerank"]),
    ({"tasks": ["embeddings", "painting", 7, {"x": 1}, None, "embeddings"]}, ["embeddings"]),  # unknown: left out
    ({"tasks": []}, []),
])
def test_announced_tasks_are_read_leniently(announced: dict, tasks: list[str]) -> None:
    rejected: Counter[str] = Counter()
    payload = NodePayload.parse({**GOOD, "models": [{"name": "m", **announced}]}, rejected)
    assert payload.models[0].tasks == tasks and not rejected


@pytest.mark.parametrize("tasks", [[], ["rerank"], ["chat", "completion", "embeddings"]], ids=repr)
def test_announced_tasks_survive_the_round_trip(tasks: list[str]) -> None:
    """Even none: an offer without its tasks would read as an older node's (chat and completion)."""
    payload = NodePayload(models=[ModelOffer(name="m", tasks=tasks, embeddings="embeddings" in tasks)])
    assert NodePayload.parse(json.loads(json.dumps(announced(payload)))).models[0].tasks == tasks


def hosts(announced: list[object], remote: str | None, own: list[tuple[str, int]] = (), port: int = 5000) -> list[str]:
    return usable_hosts(PeerEndpoint.model_construct(hosts=announced, port=port), remote, OwnAddresses(own))


def test_only_the_address_the_member_connects_from_is_used() -> None:
    # These are strings only (no packet is sent): a remote member gets only its own address,
    # never another host, loopback or link-local.
    assert hosts(["192.0.2.8", "127.0.0.1", "169.254.1.1", "::1", "fe80::1", "192.0.2.7"], "192.0.2.7") == [
        "192.0.2.7"]
    assert hosts(["192.0.2.7"], "::ffff:192.0.2.7") == ["192.0.2.7"]  # the same IP, as IPv6 sees it
    assert hosts(["127.0.0.2"], None) == []  # no connection address known: the tunnel
    assert hosts(["127.0.0.2"], "127.0.0.2", port=0) == []


def test_a_member_on_this_machine_may_use_any_loopback_address() -> None:
    """A connection between 127.0.0.x addresses comes from 127.0.0.1 whatever the dialler listens on."""
    assert hosts(["127.0.0.2", "127.0.0.3", "169.254.1.1", "192.0.2.7"], "127.0.0.1") == ["127.0.0.2", "127.0.0.3"]


@pytest.mark.parametrize("garbage", ["", "not an ip", "999.1.1.1", "fe80::1%lo", "127.0.0.2:80", "http://127.0.0.2",
                                     "127.0.0.2/32", None, 7, ["127.0.0.2"]])
def test_malformed_hosts_are_dropped_without_raising(garbage: object) -> None:
    assert hosts([garbage, "127.0.0.2"], "127.0.0.2") == ["127.0.0.2"]


def test_never_one_of_this_nodes_own_listening_sockets() -> None:
    assert hosts(["127.0.0.2"], "127.0.0.2", own=[("127.0.0.2", 5000)]) == []
    assert hosts(["127.0.0.2"], "127.0.0.2", own=[("127.0.0.2", 5001)]) == ["127.0.0.2"]
    # A wildcard bind listens on every local address with its port.
    assert hosts(["127.0.0.9"], "127.0.0.9", own=[("0.0.0.0", 5000)]) == []
    assert hosts(["127.0.0.9"], "127.0.0.9", own=[("::", 5000)]) == []  # dual stack
    assert hosts(["127.0.0.9"], "127.0.0.9", own=[("0.0.0.0", 5001), ("127.0.0.1", 5000)]) == ["127.0.0.9"]


def test_a_workers_relay_address_is_vetted_too() -> None:
    rejected: Counter[str] = Counter()
    parsed = parse_payload({**GOOD, "endpoint": {"hosts": ["127.0.0.2", "127.0.0.1"], "port": 4000},
                            "worker": {"rpc": {"hosts": ["127.0.0.1", "127.0.0.2"], "port": 4001}}})
    payload, worker = vetted(parsed, "127.0.0.2", OwnAddresses([("127.0.0.2", 4001), ("127.0.0.1", 4001)]),
                             rejected)
    assert payload.endpoint is not None and payload.endpoint.hosts == ["127.0.0.2", "127.0.0.1"]
    assert worker is not None and worker.rpc.hosts == []  # both are this node's own sockets
    assert rejected == {"endpoint_hosts": 2}


# ------------------------------------------------------------------ real processes


@pytest.mark.parametrize("advertised", ["the entry's client API", "its own client API", "garbage"])
def test_a_member_advertising_a_wrong_endpoint_is_served_through_the_tunnel_without_a_loop(
    start_node, models_dir: Path, advertised: str
) -> None:
    """M serves `tiny` and announces a peer endpoint that is not one; A (no model) routes to M.

    A's own client API is refused as A's own socket, garbage as no IP; M's own client API is on
    this machine's loopback, so it passes the address rule, and the request must still be served
    (it is not a peer endpoint: the handshake there fails and the tunnel takes over) without a loop."""
    token = new_token()
    a = start_node("--token", token, "--no-default-model", "--models-dir", str(models_dir / "none"), name="a")
    m_port = free_port("127.0.0.2")
    target = {"the entry's client API": f"127.0.0.1:{a.port}", "its own client API": f"127.0.0.2:{m_port}",
              "garbage": "not an ip!:1"}[advertised]
    m = start_node("--token", token, "--bootstrap", a.bootstrap_addr(), "--threads", "1", "--name", "m",
                   "--model", str(models_dir / "tiny.gguf"), "--peer-advertise", target,
                   name="m", host="127.0.0.2", port=m_port)
    wait_for(lambda: m.peer_id() in online_peers(a), 10.0)
    if advertised != "its own client API":
        assert online_peers(a)[m.peer_id()]["address"] == ""  # nothing announced is used: the tunnel

    started = time.monotonic()
    answer = httpx.post(a.url + "/v1/chat/completions", timeout=15,
                        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-P2PAI-Served-By"] == m.peer_id()
    assert time.monotonic() - started < 5
    assert httpx.get(a.url + "/healthz", timeout=2).status_code == 200
    if advertised != "its own client API":
        assert a.swarm()["self"]["stats"]["rejected"]["endpoint_hosts"] >= 1
