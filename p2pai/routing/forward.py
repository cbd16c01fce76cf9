"""Send a request to a peer, signed: directly over pooled keep-alive HTTP
connections, or through the overlay's tunnel when no direct address answers."""

from __future__ import annotations

import aiohttp

from ..overlay.tunnel import TunnelBroken
from .answer import Answer, AnswerBroken
from .peer_auth import sign
from .peer_http import PeerClient
from .tunnel_http import Tunnel, TunnelResponse, encode_request

CONNECT_TIMEOUT = 3.0  # a reachable peer on a LAN connects in milliseconds
POOL_SIZE = 256


class PeerUnavailable(Exception):
    """The peer could not take the request; nothing reached the client yet, so try another node."""


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
        for url in urls:
            try:
                return await self._client.request(url, method, path, self._headers(method, path, body, content_type),
                                                  body)
            except (OSError, TimeoutError, AnswerBroken) as exc:
                failures.append(f"{url}: {exc!r}")
        if self._tunnel is not None:
            request = encode_request(method, path, self._headers(method, path, body, content_type), body)
            try:
                return await TunnelResponse.open(self._tunnel(peer, request))
            except (TunnelBroken, StopAsyncIteration, ValueError) as exc:
                failures.append(f"tunnel: {exc!r}")
        raise PeerUnavailable(f"cannot reach it ({'; '.join(failures) or 'no address'})")

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
