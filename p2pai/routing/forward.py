"""Send a request to a peer, signed: directly over pooled keep-alive HTTP
connections, or through the overlay's tunnel when no direct address answers."""

from __future__ import annotations

import aiohttp

from ..overlay.tunnel import TunnelBroken
from .answer import Answer, AnswerBroken
from .peer_auth import sign
from .peer_http import PeerClient, Unreachable
from .tunnel_http import Tunnel, TunnelResponse, encode_request

CONNECT_TIMEOUT = 3.0  # a reachable peer on a LAN connects in milliseconds
POOL_SIZE = 256


class PeerUnavailable(Exception):
    """The peer could not take the request; nothing reached the client yet, so another node may.

    `lost`: the peer may have been working on the request when it failed (it died or went
    offline after the request was sent). Such a request may be what killed it, so the router
    tries it on one more node at most (no query of death across the swarm).
    """

    def __init__(self, message: str, lost: bool) -> None:
        super().__init__(message)
        self.lost = lost


class Forwarder:
    def __init__(self, peer_id: str, key: bytes, tunnel: Tunnel | None = None) -> None:
        self._peer_id = peer_id
        self._key = key
        self._tunnel = tunnel
        self._client = PeerClient(CONNECT_TIMEOUT)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """For the tunnel's handler, which replays requests on this node's own peer endpoint."""
        if self._session is None:  # created on first use, inside the running loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=POOL_SIZE, keepalive_timeout=60, enable_cleanup_closed=True),
                timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=None),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def send(self, peer: str, urls: list[str], method: str, path: str, body: bytes,
                   content_type: str | None) -> Answer:
        """The peer's response (headers read, body not yet): its addresses in order, then the tunnel."""
        failures = []
        lost = False
        for url in urls:
            try:
                return await self._client.request(url, method, path, self._headers(method, path, body, content_type),
                                                  body)
            except Unreachable as exc:
                failures.append(f"{url}: {exc}")
            except (OSError, TimeoutError, AnswerBroken) as exc:
                failures.append(f"{url}: {exc!r}")
                lost = True
        if self._tunnel is not None:
            request = encode_request(method, path, self._headers(method, path, body, content_type), body)
            try:
                return await TunnelResponse.open(self._tunnel(peer, request))
            except (TunnelBroken, StopAsyncIteration, ValueError) as exc:
                failures.append(f"tunnel: {exc!r}")
                lost = True
        raise PeerUnavailable(f"cannot reach it ({'; '.join(failures) or 'no address'})", lost)

    def _headers(self, method: str, path: str, body: bytes, content_type: str | None) -> dict[str, str]:
        """Signed headers; a fresh nonce for every attempt, since the peer may have seen the last one."""
        headers = sign(self._key, self._peer_id, method, path, body)
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def close(self) -> None:
        self._client.close()
        if self._session is not None:
            await self._session.close()
