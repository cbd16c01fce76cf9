"""The peer endpoint: the same API, answered by this node only, for requests
signed with the swarm's key (see routing.peer_auth). Client API keys are not
used here: the entry node authenticated the client and signs for it."""

from __future__ import annotations

import logging

from aiohttp import web

from ..routing.peer_auth import Rejected, Verifier
from ..routing.router import FORWARDED
from . import openapi
from .app import MAX_BODY_BYTES, Handler, openai_errors
from .errors import APIError
from .routes import routes
from .state import STATE, NodeState

log = logging.getLogger(__name__)

VERIFIER = web.AppKey("p2pai_peer_verifier", Verifier)


@web.middleware
async def signed_by_peer(request: web.Request, handler: Handler) -> web.StreamResponse:
    body = await request.read()
    try:
        sender = request.app[VERIFIER].verify(request.headers, request.method, request.path_qs, body)
    except Rejected as exc:
        log.warning("refused a peer request from %s: %s", request.remote, exc)
        raise APIError(401, f"Peer request refused: {exc}", "authentication_error", "invalid_peer_signature") from None
    request[FORWARDED] = sender
    return await handler(request)


def create_peer_app(state: NodeState, verifier: Verifier) -> web.Application:
    app = web.Application(middlewares=[openai_errors, signed_by_peer], client_max_size=MAX_BODY_BYTES)
    app[STATE] = state
    app[VERIFIER] = verifier
    app.add_routes(routes)
    app.router.add_get("/openapi.json", openapi.handler("peer"))
    return app
