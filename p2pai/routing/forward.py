"""Send a request to a peer, signed for it: directly over pooled keep-alive HTTPS
connections pinned to the peer, or through the overlay's tunnel when no direct address answers."""

from __future__ import annotations

from ..overlay.tunnel import NotDelivered, TunnelBroken
from .answer import Answer, AnswerBroken
from .peer_auth import sign
from .peer_http import PeerClient, Unreachable
from .peer_tls import PeerTLS
from .tunnel_http import Tunnel, TunnelResponse, encode_request

CONNECT_TIMEOUT = 3.0  # a reachable peer on a LAN connects in milliseconds
MISDIRECTED = 421  # what a node's client API answers a peer-signed request (api/app.py)


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
    """``tls`` None: the measurement-only plaintext mode (peer_tls.PLAINTEXT_ENV)."""

    def __init__(self, peer_id: str, key: bytes, tls: PeerTLS | None, tunnel: Tunnel | None = None) -> None:
        self._peer_id = peer_id
        self._key = key
        self._tunnel = tunnel
        self.client = PeerClient(CONNECT_TIMEOUT, tls)
        """Also the tunnel's handler's, which replays requests on this node's own peer endpoint."""

    async def send(self, peer: str, urls: list[str], method: str, path: str, body: bytes,
                   content_type: str | None) -> Answer:
        """The peer's response (headers read, body not yet): its addresses in order, then the tunnel."""
        failures = []
        lost = False
        for url in urls:
            try:
                answer = await self.client.request(url, method, path,
                                                    self._headers(peer, method, path, body, content_type), body, peer)
            except (Unreachable, ValueError) as exc:  # ValueError: not a URL we speak
                failures.append(f"{url}: {exc!r}")
                continue
            except (OSError, TimeoutError, AnswerBroken) as exc:  # the request went out
                failures.append(f"{url}: {exc!r}")
                lost = True
                continue
            if answer.status != MISDIRECTED:
                return answer
            answer.close()
            failures.append(f"{url}: not a peer endpoint (a client API answered {MISDIRECTED})")
        if self._tunnel is not None:
            request = encode_request(method, path, self._headers(peer, method, path, body, content_type), body)
            try:
                return await TunnelResponse.open(self._tunnel(peer, request))
            except NotDelivered as exc:  # no tunnel, or the peer's own endpoint did not take the replay
                failures.append(f"tunnel: {exc!r}")
            except TunnelBroken as exc:  # it broke after the request went out
                failures.append(f"tunnel: {exc!r}")
                lost = True
            except (StopAsyncIteration, ValueError) as exc:  # the peer answered, with garbage
                failures.append(f"tunnel: {exc!r}")
        raise PeerUnavailable(f"cannot reach it ({'; '.join(failures) or 'no address'})", lost)

    def _headers(self, peer: str, method: str, path: str, body: bytes, content_type: str | None) -> dict[str, str]:
        """Headers signed for ``peer``; a fresh nonce for every attempt, since the peer may have seen the last one."""
        headers = sign(self._key, self._peer_id, peer, method, path, body)
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def close(self) -> None:
        self.client.close()
