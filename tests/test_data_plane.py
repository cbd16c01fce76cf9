"""Node-to-node traffic is encrypted and authenticated: real `p2pai start` processes, three of them on
127.0.0.1, 127.0.0.2 and 127.0.0.3 (clients connect from the address of the node they ask)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import NodeProcess
from p2pai.identity import Identity
from p2pai.routing.peer_auth import TIMESTAMP, sign
from p2pai.routing.peer_tls import PLAINTEXT_ENV, PeerTLS
from p2pai.token import derive_keys, new_token, parse_token
from packet_capture import LoopbackCapture, available
from test_swarm import online_peers, wait_for

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


@pytest.fixture(scope="module")
def token() -> str:
    return new_token()


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, token: str) -> Iterator[list[NodeProcess]]:
    """Nodes a, b and c, each serving `tiny`, each on its own loopback address."""
    root = tmp_path_factory.mktemp("trio")
    nodes: list[NodeProcess] = []
    try:
        for name, host in zip("abc", HOSTS, strict=True):
            bootstrap = ["--bootstrap", nodes[0].bootstrap_addr()] if nodes else []
            nodes.append(NodeProcess("--token", token, *bootstrap, "--model", str(models_dir / "tiny.gguf"),
                                     "--threads", "1", "--name", name, data_dir=root / name, host=host))
            if not bootstrap:
                nodes[0].wait_ready()
        for node in nodes:
            node.wait_ready()
        for node in nodes:
            wait_for(lambda node=node: len(online_peers(node)) == 2, 10.0)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def api(node: NodeProcess) -> httpx.Client:
    """A client that connects from the node's own address: the client's traffic stays off the wire."""
    return httpx.Client(base_url=node.url, timeout=30, transport=httpx.HTTPTransport(local_address=node.host))


def peer_url(node: NodeProcess) -> str:
    return next(n for n in node.swarm()["federated_nodes"] if n["self"])["address"]


def test_prompts_and_answers_never_cross_between_nodes_in_clear(trio: list[NodeProcess]) -> None:
    reason = available()
    if reason is not None:
        pytest.skip(reason)
    a, b, c = trio
    marker = f"zebra{secrets.token_hex(6)}"
    control = f"control{secrets.token_hex(6)}".encode()
    answers: list[str] = []
    capture = LoopbackCapture()
    try:
        # Plain text from one address to another, to show the capture would see a leak.
        with httpx.Client(transport=httpx.HTTPTransport(local_address=c.host), timeout=5) as plain:
            assert plain.get(a.url + "/healthz", headers={"X-Control": control.decode()}).status_code == 200
        for entry, server in ((a, b), (b, c), (c, a)):
            pin = {"X-P2PAI-Node": server.peer_id()}
            prompt = f"the {marker} people of the water"
            with api(entry) as client:
                whole = client.post("/v1/completions", headers=pin,
                                    json={"model": "tiny", "prompt": prompt, "max_tokens": 24, "temperature": 0})
                assert whole.status_code == 200, whole.text
                assert whole.headers["X-P2PAI-Served-By"] == server.peer_id()
                assert whole.headers["X-P2PAI-Entry"] == entry.peer_id()
                answers.append(whole.json()["choices"][0]["text"])
                streamed = client.post("/v1/chat/completions", headers=pin, json={
                    "model": "tiny", "messages": [{"role": "user", "content": prompt}], "max_tokens": 24,
                    "stream": True})
                assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
                assert streamed.headers["X-P2PAI-Served-By"] == server.peer_id()
        time.sleep(0.2)
    finally:
        captured = capture.stop()
    assert captured.drops == 0
    assert captured.flows_with(control), "the capture saw no plain text between two addresses"
    for server in (b, c, a):  # the forwarded requests did cross, to each peer endpoint
        endpoint = httpx.URL(peer_url(server))
        assert endpoint.scheme == "https"
        assert captured.bytes_to(endpoint.host, endpoint.port) > 1000
    # Only the test's own requests to the client APIs carry them (on one address each); nothing else,
    # whatever its addresses: a node's connection to another may leave from 127.0.0.1 (the kernel's pick).
    clients = frozenset(node.port for node in trio)
    assert captured.flows_with(marker.encode()) and not captured.flows_with(marker.encode(), clients)
    for text in answers:
        assert len(text) >= 8
        for form in {text.encode(), json.dumps(text)[1:-1].encode()}:
            assert not captured.flows_with(form, clients), text


def test_a_request_signed_for_one_node_is_refused_by_another(trio: list[NodeProcess], token: str,
                                                             tmp_path: Path) -> None:
    _, b, c = trio
    keys = derive_keys(parse_token(token))
    member = PeerTLS.load_or_create(tmp_path, keys.peer_ca_key, Identity.generate())
    body = b'{"model": "tiny", "content": "hello"}'

    def post(node: NodeProcess, headers: dict[str, str]) -> httpx.Response:
        with httpx.Client(verify=member.client_context(), timeout=10,
                          transport=httpx.HTTPTransport(local_address=node.host,
                                                        verify=member.client_context())) as client:
            return client.post(peer_url(node) + "/v1/tokenize", content=body, headers=headers)

    def signed(node: NodeProcess, now: float | None = None) -> dict[str, str]:
        return sign(keys.http_key, member.peer_id, node.peer_id(), "POST", "/v1/tokenize", body, now=now)

    for_b = signed(b)
    refused = {
        "signed for B, sent to C": post(c, for_b),
        "stale": post(b, signed(b, time.time() - 60)),
        "future": post(b, signed(b, time.time() + 60)),
        "NaN": post(b, {**signed(b), TIMESTAMP: "NaN"}),
    }
    assert post(b, for_b).status_code == 200
    refused["replayed to B"] = post(b, for_b)
    for case, response in refused.items():
        assert response.status_code == 401, case
        assert response.json()["error"]["code"] == "invalid_peer_signature", case
    assert "another node" in refused["signed for B, sent to C"].json()["error"]["message"]


@pytest.mark.parametrize("mode", ["tls", "plaintext"])
def test_a_member_announcing_another_nodes_client_api_as_its_peer_endpoint_loops_nothing(
        start_node, models_dir: Path, mode: str) -> None:
    """B announces A's client API as its peer endpoint, so A's requests for B reach A's own client API.
    Over TLS no handshake succeeds there; in plaintext A's client API refuses the peer-signed request
    (it used to route it on: to "B", that is to itself, until A stopped answering). Either way the
    request is served by B through the tunnel."""
    token = new_token()
    env = {PLAINTEXT_ENV: "1"} if mode == "plaintext" else {}
    a = start_node("--token", token, "--no-default-model", "--models-dir", str(models_dir / "none"), name="a", env=env)
    b = start_node("--token", token, "--bootstrap", a.bootstrap_addr(), "--model", str(models_dir / "tiny.gguf"),
                   "--peer-advertise", f"{a.host}:{a.port}", "--name", "b", name="b", env=env)
    wait_for(lambda: len(online_peers(a)) == 1, 5.0)
    started = time.monotonic()
    with httpx.Client(base_url=a.url, timeout=30) as client:
        for _ in range(3):
            answer = client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 4})
            assert answer.status_code == 200, answer.text
            assert answer.headers["X-P2PAI-Served-By"] == b.peer_id()
            assert client.get("/healthz").status_code == 200
    assert time.monotonic() - started < 10
    assert "Traceback" not in a.log.read_text()
