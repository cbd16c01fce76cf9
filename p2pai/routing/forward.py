"""Send a request to a peer's endpoint, signed, over pooled keep-alive connections."""

from __future__ import annotations

import aiohttp

from .peer_auth import sign

CONNECT_TIMEOUT = 3.0  # a reachable peer on a LAN connects in milliseconds
POOL_SIZE = 256


class PeerUnavailable(Exception):
    """The peer could not take the request; nothing reached the client yet, so try another node."""


class Forwarder:
    def __init__(self, peer_id: str, key: bytes) -> None:
        self._peer_id = peer_id
        self._key = key
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on first use, inside the running loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=POOL_SIZE, keepalive_timeout=60, enable_cleanup_closed=True),
                timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=None),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def send(self, urls: list[str], method: str, path: str, body: bytes,
                   content_type: str | None) -> aiohttp.ClientResponse:
        """The peer's response (headers read, body not yet), trying its addresses in order."""
        if not urls:
            raise PeerUnavailable("it announces no reachable endpoint")
        failure = ""
        for url in urls:
            # A fresh nonce per attempt: the peer may have seen the previous one.
            headers = sign(self._key, self._peer_id, method, path, body)
            if content_type:
                headers["Content-Type"] = content_type
            try:
                return await self._client().request(method, url + path, data=body, headers=headers)
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                failure = f"{url}: {exc!r}"
        raise PeerUnavailable(f"cannot connect ({failure})")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
