"""The peer endpoint against hostile input, in-process on loopback: the real peer app behind its
PeerSite with TLS, a member's client (its own certificate from the swarm CA) and strangers."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from p2pai.api.peer_app import create_peer_app, peer_guard, peer_runner
from p2pai.api.peer_site import PeerSite, RefusalLog
from p2pai.api.state import NodeState
from p2pai.identity import Identity
from p2pai.models.catalog import build_catalog
from p2pai.protocol.figures import ModelFigures
from p2pai.routing.forward import Forwarder
from p2pai.routing.peer_auth import SIGNED_HEADERS, TIMESTAMP, sign
from p2pai.routing.peer_http import PeerClient, Unreachable, WrongPeer
from p2pai.routing.peer_tls import PeerTLS
from p2pai.routing.probe import Prober
from p2pai.serving.manager import ModelManager
from p2pai.token import derive_keys, new_token, parse_token

HOST = "127.0.0.1"
MAX_PER_SOURCE = 4
TOKENIZE = b'{"model": "tiny", "content": "hello"}'


@dataclass
class Endpoint:
    url: str
    port: int
    node_id: str
    key: bytes
    member: PeerTLS  # the test's own membership: a certificate from the swarm CA, bound to its identity
    stranger: PeerTLS  # a node of another swarm

    def signed(self, method: str, path: str, body: bytes = b"", **changes: object) -> dict[str, str]:
        """Headers a member signs for this node; ``changes`` alter what is signed."""
        key = changes.get("key", self.key)
        sender = changes.get("sender", self.member.peer_id)
        destination = changes.get("destination", self.node_id)
        now = changes.get("now", time.time())
        return sign(key, sender, destination, method, path, body, now=now)  # type: ignore[arg-type]

    def client(self, tls: PeerTLS | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, verify=(tls or self.member).client_context(), timeout=10)

    async def raw(self, head: bytes, tls: ssl.SSLContext | None = None, local: str = HOST
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection that sends ``head`` as it is (any bytes), from ``local``."""
        reader, writer = await asyncio.open_connection(HOST, self.port, ssl=tls or self.member.client_context(),
                                                       local_addr=(local, 0))
        writer.write(head)
        return reader, writer


@pytest.fixture
async def endpoint(models_dir: Path, tmp_path: Path) -> AsyncIterator[Endpoint]:
    keys = derive_keys(parse_token(new_token()))
    node = Identity.generate()
    tls = PeerTLS.load_or_create(tmp_path / "node", keys.peer_ca_key, node)
    manager = ModelManager(build_catalog(models_dir, tmp_path, []), threads=1)
    guard = peer_guard(keys.http_key, node.peer_id, tls)
    runner = peer_runner(create_peer_app(NodeState(manager, node_id=node.peer_id, version="test", ready=True), guard))
    await runner.setup()
    site = PeerSite(runner, HOST, 0, tls.server_context(), guard.refusals, max_per_source=MAX_PER_SOURCE)
    await site.start()
    stranger_keys = derive_keys(parse_token(new_token()))
    yield Endpoint(f"https://{HOST}:{site.port}", site.port, node.peer_id, keys.http_key,
                   PeerTLS.load_or_create(tmp_path / "member", keys.peer_ca_key, Identity.generate()),
                   PeerTLS.load_or_create(tmp_path / "stranger", stranger_keys.peer_ca_key, Identity.generate()))
    await runner.cleanup()
    await manager.close()


def refused(response: httpx.Response) -> bool:
    return response.status_code == 401 and response.json()["error"]["code"] == "invalid_peer_signature"


async def test_a_member_request_is_served_and_every_altered_one_refused(endpoint: Endpoint, tmp_path: Path) -> None:
    other_member = PeerTLS.load_or_create(tmp_path / "other", derive_keys(parse_token(new_token())).peer_ca_key,
                                          Identity.generate())
    async with endpoint.client() as client:
        good = endpoint.signed("POST", "/v1/tokenize", TOKENIZE)
        assert (await client.post("/v1/tokenize", content=TOKENIZE, headers=good)).status_code == 200
        models = await client.get("/v1/models", headers=endpoint.signed("GET", "/v1/models"))
        assert sorted(card["id"] for card in models.json()["data"]) == ["tiny", "tiny-b"]

        def post(headers: dict[str, str], body: bytes = TOKENIZE, path: str = "/v1/tokenize") -> object:
            return client.post(path, content=body, headers=headers)

        cases = {
            "replayed": post(good),
            "unsigned": post({}),
            "wrong key": post(endpoint.signed("POST", "/v1/tokenize", TOKENIZE, key=b"k" * 32)),
            "stale": post(endpoint.signed("POST", "/v1/tokenize", TOKENIZE, now=time.time() - 120)),
            "future": post(endpoint.signed("POST", "/v1/tokenize", TOKENIZE, now=time.time() + 120)),
            "NaN timestamp": post({**endpoint.signed("POST", "/v1/tokenize", TOKENIZE), TIMESTAMP: "nan"}),
            "other body": post(endpoint.signed("POST", "/v1/tokenize", TOKENIZE), body=TOKENIZE.replace(b"o", b"0")),
            "other path": post(endpoint.signed("POST", "/v1/embeddings", TOKENIZE)),
            "signed for another node": post(endpoint.signed("POST", "/v1/tokenize", TOKENIZE,
                                                            destination=other_member.peer_id)),
            # A member signing as another member: the certificate it connects with is not that member's.
            "sender is not the certificate's": post(endpoint.signed("POST", "/v1/tokenize", TOKENIZE,
                                                                    sender=other_member.peer_id)),
            "a client API key": post({"Authorization": "Bearer anything"}),
        }
        for case, pending in cases.items():
            response = await pending  # type: ignore[misc]
            assert refused(response), (case, response.status_code, response.text)


async def test_a_member_may_ask_for_the_current_figures_of_a_model(endpoint: Endpoint) -> None:
    """What an entry node of a large swarm asks before sending (routing/probe.py): typed, for members only."""
    async with endpoint.client() as client:
        path = "/p2p/figures?model=tiny"
        answer = await client.get(path, headers=endpoint.signed("GET", path))
        assert answer.status_code == 200
        figures = ModelFigures.model_validate_json(answer.content)
        assert (figures.name, figures.loaded, figures.in_flight, figures.fits) == ("tiny", False, 0, True)
        unknown = "/p2p/figures?model=nope"
        missing = await client.get(unknown, headers=endpoint.signed("GET", unknown))
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "model_not_found")
        assert (await client.get(path)).status_code == 401


async def test_a_probe_round_waits_for_a_silent_peer_at_most_its_timeout(endpoint: Endpoint) -> None:
    """routing/probe.py against the real peer app and a peer that accepts connections but never
    answers (a frozen process: the kernel accepts for it)."""
    silent = socket.create_server((HOST, 0))
    forwarder = Forwarder(endpoint.member.peer_id, endpoint.key, endpoint.member)
    prober = Prober(forwarder, timeout=0.5)
    frozen = (Identity.generate().peer_id, (f"https://{HOST}:{silent.getsockname()[1]}",))
    asked = [(endpoint.node_id, (endpoint.url,)), frozen]
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        answers = await prober.round("tiny", asked, lambda peer, figures: False)  # no answer is enough: wait for all
        waited = loop.time() - started
        assert list(answers) == [endpoint.node_id] and answers[endpoint.node_id].name == "tiny"
        assert 0.5 <= waited < 1.5, waited
        started = loop.time()
        answers = await prober.round("tiny", asked, lambda peer, figures: True)  # the first answer is enough
        assert list(answers) == [endpoint.node_id]
        assert loop.time() - started < 0.5
    finally:
        await forwarder.close()
        silent.close()


@pytest.mark.parametrize("garbage", [b"", b"nan", b"\xff\xfe\xc3", b"x" * 4000, b"1 2", b"%00", b"\xef\xbc\x91"])
async def test_garbage_in_any_signature_header_is_a_401_in_json(endpoint: Endpoint, garbage: bytes) -> None:
    for name in SIGNED_HEADERS:
        headers = endpoint.signed("POST", "/v1/tokenize", TOKENIZE)
        lines = b"".join(b"%s: %s\r\n" % (k.encode(), garbage if k == name else v.encode()) for k, v in headers.items())
        reader, writer = await endpoint.raw(b"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%b\r\n%b"
                                            % (len(TOKENIZE), lines, TOKENIZE))
        try:
            answer = await asyncio.wait_for(reader.read(), 5)  # the refusal closes the connection
        finally:
            writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401 "), (name, garbage, head)
        assert json.loads(body)["error"]["code"] == "invalid_peer_signature"


async def test_an_unsigned_request_announcing_16_mb_is_refused_within_1_s_without_its_body(endpoint: Endpoint) -> None:
    stale = endpoint.signed("POST", "/v1/completions", now=time.time() - 120)
    for headers in ({}, stale):
        lines = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items())
        started = time.monotonic()
        reader, writer = await endpoint.raw(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                                            b"Content-Type: application/json\r\nContent-Length: 16000000\r\n%b\r\n"
                                            % lines)
        try:  # not one byte of the body is sent: the answer cannot have waited for it
            answer = await asyncio.wait_for(reader.read(), 1.0)  # ends: the connection is closed too
        finally:
            writer.close()
        assert time.monotonic() - started < 1.0
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401 ") and json.loads(body)["error"]["code"] == "invalid_peer_signature"


async def test_only_members_complete_a_handshake(endpoint: Endpoint) -> None:
    no_certificate = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_certificate.check_hostname, no_certificate.verify_mode = False, ssl.CERT_NONE
    stranger = endpoint.stranger.client_context()
    stranger.verify_mode = ssl.CERT_NONE  # it would not trust the node either: here only the node's check counts
    request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    for context in (no_certificate, stranger):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            reader, writer = await endpoint.raw(request, context)
            try:  # TLS 1.3: the client's side of the handshake ends first; the node's alert comes next
                assert await asyncio.wait_for(reader.read(), 5) == b""
                raise ConnectionError("closed without an answer")
            finally:
                writer.close()
    with pytest.raises(ssl.SSLCertVerificationError):  # and a stranger does not take the node for a member
        await endpoint.raw(request, endpoint.stranger.client_context())


async def test_a_caller_reaches_only_the_peer_it_pins(endpoint: Endpoint) -> None:
    client = PeerClient(3.0, endpoint.member)
    headers = endpoint.signed("GET", "/v1/models")
    try:
        with pytest.raises(Unreachable) as refused:
            await client.request(endpoint.url, "GET", "/v1/models", headers, b"", endpoint.member.peer_id)
        assert isinstance(refused.value.__cause__, WrongPeer)
        with pytest.raises(ValueError):
            await client.request(endpoint.url.replace("https", "http"), "GET", "/v1/models", headers, b"",
                                 endpoint.node_id)
        # The same signed request is still fresh: nothing was sent to the wrong peer.
        answer = await client.request(endpoint.url, "GET", "/v1/models", headers, b"", endpoint.node_id)
        assert answer.status == 200 and json.loads(await answer.read())["object"] == "list"
        answer.release()
    finally:
        client.close()


async def test_connections_per_source_address_are_capped(endpoint: Endpoint) -> None:
    held = [await endpoint.raw(b"") for _ in range(MAX_PER_SOURCE)]
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):  # closed before any handshake
            await endpoint.raw(b"")
        async with endpoint.client() as client:  # from 127.0.0.1 too: refused while the others are held
            with pytest.raises(httpx.ConnectError):
                await client.get("/v1/models", headers=endpoint.signed("GET", "/v1/models"))
        reader, writer = await endpoint.raw(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", local="127.0.0.2")
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 401 ")  # another source
        writer.close()
    finally:
        for _, writer in held:
            writer.close()
    await asyncio.sleep(0.1)
    async with endpoint.client() as client:
        assert (await client.get("/v1/models", headers=endpoint.signed("GET", "/v1/models"))).status_code == 200


async def test_refusals_are_logged_at_most_a_burst_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    log = RefusalLog(logging.getLogger("test-refusals"), burst=2, interval=0.3)
    with caplog.at_level(logging.WARNING, logger="test-refusals"):
        for i in range(5):
            log("refused %d", i)
        assert [r.getMessage() for r in caplog.records] == ["refused 0", "refused 1"]
        await asyncio.sleep(0.35)
        log("refused %d", 5)
    assert caplog.records[-1].getMessage() == "refused 5 (3 similar refusals not logged)"


async def test_a_flood_of_bad_requests_logs_a_few_lines(endpoint: Endpoint, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="p2pai.api.peer_app"):
        async with endpoint.client() as client:
            for _ in range(40):
                assert refused(await client.get("/v1/models"))
    assert 1 <= len(caplog.records) <= 10


async def test_the_client_api_refuses_peer_signed_requests_and_never_routes_them(client) -> None:
    """What reaches a client API with a peer's signature came through a member announcing this API as
    its peer endpoint: refused with 421 (the forwarder then tries another way), never served or routed."""
    headers = sign(b"k" * 32, "PeerA", "NodeB", "POST", "/v1/completions", b"{}")
    for name, value in [*headers.items(), ("X-P2PAI-Signature", "garbage")]:
        response = await client.post("/v1/completions", data=b'{"model": "tiny", "prompt": "hi"}',
                                     headers={name: value})
        assert response.status == 421
        assert (await response.json())["error"]["code"] == "misdirected_peer_request"
    assert (await client.get("/healthz")).status == 200
