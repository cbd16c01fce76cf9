"""The peer endpoint: the same API, answered by this node only, for requests
signed for this node with the swarm's key (see routing.peer_auth) and, over TLS,
sent with the client certificate of the peer that signed them (routing.peer_tls).
Client API keys are not used here: the entry node authenticated the client and signs for it.

A request is judged by its headers before its body is read: a refused request
is answered 401 at once and its connection closed, whatever body it announced.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web

from ..routing.peer_auth import Rejected, Signed, Verifier
from ..routing.peer_tls import PeerTLS
from ..routing.router import FORWARDED
from . import openapi
from .app import FAMILY_ROUTES, MAX_BODY_BYTES, Handler, body_limit, openai_errors
from .errors import APIError
from .observe import observer
from .peer_figures import peer_figures_routes
from .peer_files import peer_file_routes
from .peer_site import PEER_CERTIFICATE, RefusalLog
from .state import STATE, NodeState

log = logging.getLogger(__name__)


@dataclass
class PeerGuard:
    """What admits a request: its signature, and (over TLS) whose certificate it came with."""

    verifier: Verifier
    tls: PeerTLS | None
    refusals: RefusalLog

    def check(self, request: web.Request) -> Signed:
        """Who sent ``request``, judged from its headers and connection alone; or Rejected."""
        signed = self.verifier.check(request.headers, request.method, request.path_qs)
        if self.tls is not None:
            transport = request.transport
            certificate = transport.get_extra_info(PEER_CERTIFICATE) if transport is not None else None
            # This node's own certificate: a tunnelled request replayed here (tunnel_http checked its sender).
            if certificate != self.tls.own_der and self.tls.bound_peer(certificate) != signed.sender:
                raise Rejected("the client certificate is not the signing peer's")
        return signed


GUARD = web.AppKey("p2pai_peer_guard", PeerGuard)


def peer_guard(key: bytes, node_id: str, tls: PeerTLS | None) -> PeerGuard:
    return PeerGuard(Verifier(key, node_id), tls, RefusalLog(log))


@web.middleware
async def signed_by_peer(request: web.Request, handler: Handler) -> web.StreamResponse:
    guard = request.app[GUARD]
    try:
        signed = guard.check(request)
        signed.check_body(await request.read())
    except Rejected as exc:
        guard.refusals("refused a peer request from %s: %s", request.remote, exc)
        response = APIError(401, f"Peer request refused: {exc}", "authentication_error",
                            "invalid_peer_signature").response()
        response.force_close()  # the body it announced is never read (the runner does not linger)
        return response
    request[FORWARDED] = signed.sender
    return await handler(request)


def create_peer_app(state: NodeState, guard: PeerGuard) -> web.Application:
    app = web.Application(middlewares=[observer(peer=True), openai_errors, body_limit, signed_by_peer],
                          client_max_size=MAX_BODY_BYTES)
    app[STATE] = state
    app[GUARD] = guard
    for family in FAMILY_ROUTES:
        app.add_routes(family)
    app.add_routes(peer_file_routes)
    app.add_routes(peer_figures_routes)
    app.router.add_get("/openapi.json", openapi.handler("peer"))
    return app


def peer_runner(app: web.Application) -> web.AppRunner:
    """The runner for the peer app: handlers cancelled with their connection, and no lingering
    to read (and throw away) the rest of a refused request's body."""
    return web.AppRunner(app, handler_cancellation=True, access_log=None, lingering_time=0)
