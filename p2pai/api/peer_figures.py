"""GET /p2p/figures?model=NAME on the peer endpoint: this node's current figures for one of its
models, which an entry node of a large swarm asks for before sending it a request (routing/probe.py)."""

from __future__ import annotations

from aiohttp import web

from ..routing.probe import FIGURES_PATH, own_figures
from ..serving.manager import UnknownModelError
from .replies import json_reply
from .state import NodeState

peer_figures_routes = web.RouteTableDef()


@peer_figures_routes.get(FIGURES_PATH)
async def figures(request: web.Request) -> web.Response:
    manager = NodeState.of(request).manager
    model = request.query.get("model", "")
    if model not in manager.names():
        raise UnknownModelError(model[:256])
    return json_reply(own_figures(manager, model))
