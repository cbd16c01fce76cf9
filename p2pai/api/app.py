"""The aiohttp application of a node: middlewares, then the routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from ..routing.peer_auth import is_peer_request
from ..serving.limits import MAX_BODY_BYTES, MAX_UPLOAD_BODY_BYTES
from . import openapi
from .anthropic import anthropic_routes, is_anthropic
from .dashboard import DASHBOARD_PREFIX, dashboard_routes
from .errors import APIError, from_exception
from .keys import has_key, invalid_key
from .localai import localai_routes, model_routes
from .observe import observe_routes, observer
from .p2p import p2p_routes
from .responses import responses_routes
from .routes import routes
from .state import STATE, NodeState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FAMILY_ROUTES = (routes, anthropic_routes, responses_routes, localai_routes)
"""The API families: served to clients, and on the peer endpoint to the nodes that forward requests."""
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})
"""With the dashboard's assets (DASHBOARD_PREFIX): they hold no data; the page asks for a key when the API needs one."""
UPLOAD_PATHS = frozenset({"/v1/audio/transcriptions", "/audio/transcriptions", "/v1/audio/translations",
                          "/audio/translations"})


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error, ours or aiohttp's (404 route, 405, 413), leaves as OpenAI JSON (Anthropic's on its paths)."""
    try:
        return await handler(request)
    except (ConnectionResetError, ConnectionError):
        raise
    except Exception as exc:  # noqa: BLE001 - converted into the response
        return from_exception(exc).response(anthropic_shape=is_anthropic(request.path))


@web.middleware
async def body_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bodies are at most MAX_BODY_BYTES (413), but an audio upload may be as large as OpenAI's (25 MiB per
    file, MAX_UPLOAD_BODY_BYTES with the form); set before anything reads the body."""
    if request.path in UPLOAD_PATHS:
        request = request.clone(client_max_size=MAX_UPLOAD_BODY_BYTES)
    return await handler(request)


@web.middleware
async def admitted(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Who may use the client API, in one middleware (a layer fewer on every request).

    A request signed by a peer belongs on the peer endpoint. Here it came through a member that
    announced this node's client API as its peer endpoint (or a misconfiguration): it is refused,
    never routed on, so that no request travels in a loop. The router fails over on 421.
    With API keys set, every path but the open ones needs one."""
    if is_peer_request(request.headers):
        raise APIError(421, "A peer request reached the client API; peers must use the peer endpoint.",
                       code="misdirected_peer_request")
    state = NodeState.of(request)
    if (state.api_keys and request.path not in OPEN_PATHS and not request.path.startswith(DASHBOARD_PREFIX)
            and not has_key(request, state.api_keys | state.admin_keys)):
        raise invalid_key()
    return await handler(request)


def create_app(state: NodeState) -> web.Application:
    app = web.Application(middlewares=[observer(peer=False), openai_errors, body_limit, admitted],
                          client_max_size=MAX_BODY_BYTES)
    app[STATE] = state
    for family in FAMILY_ROUTES:
        app.add_routes(family)
    app.add_routes(p2p_routes)
    app.add_routes(model_routes)
    app.add_routes(observe_routes)
    app.add_routes(dashboard_routes)
    app.router.add_get("/openapi.json", openapi.handler("client"))
    return app
