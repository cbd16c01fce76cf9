"""What a failed forward says about its request: it never reached the peer's model (another node
may take it freely), or the peer may have been working on it (`lost`: the router lets such a
request travel to one more node at most). The tunnel between real overlays on 127.0.0.1 (a real
node where one has to die); real sockets for the direct path."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from conftest import free_port
from overlay_helpers import overlay_pair
from p2pai.api.peer_site import PeerSite, RefusalLog
from p2pai.identity import Identity
from p2pai.models.fetch import SourceError
from p2pai.overlay import Overlay, OverlayConfig
from p2pai.routing.answer import AnswerBroken
from p2pai.routing.forward import Forwarder, PeerUnavailable
from p2pai.routing.peer_files import PeerSource
from p2pai.routing.peer_http import PeerClient
from p2pai.routing.peer_tls import PeerTLS
from p2pai.routing.tunnel_http import TunnelResponse, serve_locally
from p2pai.serving.limits import MAX_UPLOAD_BODY_BYTES
from p2pai.swarm.swarm import Swarm
from p2pai.token import derive_keys, new_token, parse_token

KEY = os.urandom(32)
BODY = b'{"model": "tiny", "prompt": "hi"}'


async def forward(forwarder: Forwarder, peer: str, urls: list[str]) -> PeerUnavailable:
    with pytest.raises(PeerUnavailable) as failed:
        await asyncio.wait_for(forwarder.send(peer, urls, "POST", "/v1/completions", BODY, "application/json"), 10)
    return failed.value


@pytest.fixture
async def overlays(tmp_path: Path) -> AsyncIterator[tuple[Overlay, Overlay]]:
    """A (the sender) and B, connected."""
    async with overlay_pair(tmp_path, ["federated"]) as (a, b, events):
        while (await asyncio.wait_for(events.get(), 5)).kind != "online":
            pass
        yield a, b


async def test_a_replay_the_peer_cannot_pass_to_its_own_endpoint_is_not_lost(overlays) -> None:
    a, b = overlays
    client = PeerClient(connect_timeout=3.0)
    closed = free_port()  # B's own peer endpoint is not there
    b.set_tunnel_handler(serve_locally(client, lambda: f"http://127.0.0.1:{closed}", b.peer_id))
    forwarder = Forwarder(a.peer_id, KEY, None, tunnel=a.tunnel)
    try:
        failed = await forward(forwarder, b.peer_id, [])
    finally:
        client.close()
        await forwarder.close()
    assert "could not take the request" in str(failed) and "cannot connect" in str(failed)
    assert failed.lost is False


async def test_the_tunnel_carries_a_request_as_large_as_an_audio_upload(overlays) -> None:
    """26 MiB in one frame: libp2p's read_exactly gave up after about 6 MiB (100 reads of a yamux frame)."""
    a, b = overlays

    async def digest(peer: str, request: bytes) -> AsyncIterator[bytes]:
        yield hashlib.sha256(request).digest()

    b.set_tunnel_handler(digest)
    body = os.urandom(MAX_UPLOAD_BODY_BYTES)
    answer = [piece async for piece in a.tunnel(b.peer_id, body)]
    assert answer == [hashlib.sha256(body).digest()]


@pytest.mark.e2e
async def test_a_tunnel_that_breaks_after_the_request_went_out_is_lost(start_node, tiny_path: Path, tmp_path: Path
                                                                       ) -> None:
    """B is a real node, reached only through the tunnel; it dies while the request waits in its socket."""
    token = new_token()
    b = start_node("--token", token, "--model", str(tiny_path), "--threads", "1", name="b")
    b_id, bootstrap = b.peer_id(), b.bootstrap_addr()
    keys = derive_keys(parse_token(token))
    a = Overlay(OverlayConfig(data_dir=tmp_path / "a", keys=keys, name="a", version="0.1.0", roles=["federated"],
                              listen=[f"/ip4/127.0.0.1/tcp/{free_port()}"], bootstrap=[bootstrap], mdns=False))
    events = a.subscribe()
    await a.start()
    forwarder = Forwarder(a.peer_id, keys.http_key, None, tunnel=a.tunnel)
    try:
        while (await asyncio.wait_for(events.get(), 10)).kind != "online":
            pass
        answer = await forwarder.send(b_id, [], "POST", "/v1/completions", BODY, "application/json")
        assert answer.status == 200 and b"choices" in await answer.read()  # the control: B answers
        answer.release()
        b.proc.send_signal(signal.SIGSTOP)
        sent = asyncio.ensure_future(forward(forwarder, b_id, []))
        await asyncio.sleep(1.0)  # the request is written, into B's socket
        assert not sent.done()
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait(5)
        failed = await sent
        assert failed.lost is True, str(failed)
        # The next request finds no tunnel to B: it never left this node.
        again = await forward(forwarder, b_id, [])
        assert again.lost is False, str(again)
        assert "could not open a tunnel stream" in str(again)
    finally:
        await forwarder.close()
        await a.stop()


async def test_direct_attempts_are_lost_only_once_the_request_went_out(tmp_path: Path) -> None:
    seed = os.urandom(32)
    entry, other = (PeerTLS.load_or_create(tmp_path / name, seed, Identity.generate()) for name in ("e", "o"))
    wanted = Identity.generate().peer_id
    # A closed port; a member that proves to be another node than the one asked for.
    runner = web.AppRunner(web.Application(), access_log=None)
    await runner.setup()
    site = PeerSite(runner, "127.0.0.1", 0, other.server_context(), RefusalLog(logging.getLogger(__name__)))
    await site.start()
    forwarder = Forwarder(entry.peer_id, KEY, entry)
    try:
        failed = await forward(forwarder, wanted, [f"https://127.0.0.1:{free_port()}",
                                                   f"https://127.0.0.1:{site.port}"])
        assert "WrongPeer" in str(failed)
        assert failed.lost is False, str(failed)
    finally:
        await forwarder.close()
        await runner.cleanup()

    # A peer that reads the request and dies on it.
    taken = asyncio.Event()

    async def dies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        taken.set()
        writer.transport.abort()

    server = await asyncio.start_server(dies, "127.0.0.1", 0)
    forwarder = Forwarder(entry.peer_id, KEY, None)
    try:
        failed = await forward(forwarder, wanted, [f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"])
        assert taken.is_set() and failed.lost is True, str(failed)
    finally:
        await forwarder.close()
        server.close()
        await server.wait_closed()


async def pieces(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@pytest.mark.parametrize("arrived_first", [True, False])
async def test_a_tunnelled_answer_without_content_length_is_bounded_as_it_is_read(arrived_first: bool) -> None:
    """A tunnelled answer carries no Content-Length: a caller's limit bounds its body instead,
    also when the whole body arrived before the caller set it."""
    head = b'{"status": 200, "headers": {"Content-Type": "application/octet-stream"}}'
    for limit, fits in ((30, True), (29, False)):
        answer = await TunnelResponse.open(pieces(len(head).to_bytes(4, "big") + head, b"a" * 10, b"b" * 20))
        assert "Content-Length" not in answer.headers
        for _ in range(100 if arrived_first else 0):
            if answer.complete:
                break
            await asyncio.sleep(0.01)
        assert answer.complete is arrived_first
        if fits:
            assert await answer.read_at_most(limit) == b"a" * 10 + b"b" * 20
        else:
            with pytest.raises(AnswerBroken, match="exceeded 29 bytes"):
                await answer.read_at_most(limit)
        answer.release()


async def test_a_pull_source_is_asked_at_the_addresses_its_peer_announces_now(overlays) -> None:
    """A source made while its peer had announced no endpoint (a puller can see the models first)
    is asked at the endpoint announced since, not through the tunnel for the rest of the pull."""
    a, b = overlays
    swarm = Swarm(b, dict)
    a.set_payload({"cpus": 2})  # announced as a change: B's swarm indexes A
    stale = await until(5, lambda: swarm.serving_peer(a.peer_id), "A in B's view")
    assert stale.endpoint_urls() == []
    closed = free_port()
    a.set_payload({"endpoint": {"hosts": ["127.0.0.1"], "port": closed}})
    await until(5, lambda: (node := swarm.serving_peer(a.peer_id)) is not None and node.endpoint_urls(),
                 "A's endpoint in B's view")
    forwarder = Forwarder(b.peer_id, KEY, None)
    try:
        with pytest.raises(SourceError, match=f"https://127.0.0.1:{closed}"):
            await asyncio.wait_for(PeerSource(forwarder, swarm, stale, "0" * 64).read(0, 16), 10)
    finally:
        await forwarder.close()


async def until(seconds: float, value: Callable[[], Any], what: str) -> Any:
    """``value()`` once it is truthy, polled for at most ``seconds``."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if got := value():
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
