"""GET /api/p2p (the swarm, in the shape of LocalAI's P2PNodesResponse) and GET /api/p2p/token."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from ..protocol.p2p import (
    FederatedNode,
    OverlayStats,
    P2PNodesResponse,
    PeerMetrics,
    SelfNode,
    WorkerNode,
)
from ..swarm.view import SwarmNode
from .errors import APIError
from .keys import forbidden, require_admin
from .replies import json_reply
from .state import NodeState

p2p_routes = web.RouteTableDef()

PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


@p2p_routes.get("/api/p2p")
async def swarm_nodes(request: web.Request) -> web.Response:
    state = NodeState.of(request)
    if state.swarm is None:
        raise APIError(503, "this node has not joined a swarm", code="p2p_disabled")
    nodes = state.swarm.nodes()
    metrics = state.router.metrics if state.router is not None else {}
    me = nodes[0]
    return json_reply(P2PNodesResponse(
        federated_nodes=[
            FederatedNode(**_serving(node), metrics=PeerMetrics(**metrics[node.id].as_json())
                          if node.id in metrics else None)
            for node in nodes
            if node.federated
        ],
        llama_cpp_nodes=[_worker(node) for node in nodes if node.llama_worker],
        mlx_nodes=[],
        self=SelfNode(**_serving(me), addrs=list(me.addrs), stats=OverlayStats.model_validate(state.swarm.stats())),
    ))


@p2p_routes.get("/api/p2p/token")
async def swarm_token(request: web.Request) -> web.Response:
    """The token lets anyone join the swarm. Never through a reverse proxy (its requests come
    from this machine, for anyone); with keys set, only for an admin key; without keys, only to
    a caller on this machine."""
    state = NodeState.of(request)
    if state.token is None:
        raise APIError(503, "this node has not joined a swarm", code="p2p_disabled")
    if any(name in request.headers for name in PROXY_HEADERS):
        raise forbidden("The swarm token is never given through a proxy (the request carries a forwarding header).")
    require_admin(request, state.api_keys, state.admin_keys, "The swarm token")
    if not (state.api_keys or state.admin_keys) and not _is_loopback(request.remote):
        raise forbidden("The swarm token is only given to callers on this machine unless the node has an admin key.")
    return web.Response(text=state.token, content_type="text/plain", headers={"Cache-Control": "no-store"})


def _serving(node: SwarmNode) -> dict[str, Any]:
    """The fields of a node that serves models (FederatedNode and SelfNode)."""
    payload = node.payload
    urls = node.endpoint_urls()
    return {
        **_common(node, "p2pai-federated"),
        "tunnelAddress": urls[0].removeprefix("http://") if urls else "",
        "address": urls[0] if urls else "",
        "models": [offer.name for offer in payload.models],
        "loaded": [offer.name for offer in payload.models if offer.loaded],
        "model_stats": payload.models,
        "capacity": payload.capacity,
        "memory": payload.memory,
        "cpus": payload.cpus,
        "gpus": payload.gpus,
    }


def _worker(node: SwarmNode) -> WorkerNode:
    worker = node.worker
    assert worker is not None
    host = worker.rpc.hosts[0] if worker.rpc.hosts else ""
    return WorkerNode(
        **_common(node, "p2pai-llama-cpp-worker"),
        tunnelAddress=f"{host}:{worker.rpc.port}" if host else "",
        **worker.model_dump(exclude={"rpc"}),
    )


def _common(node: SwarmNode, service: str) -> dict[str, Any]:
    return {
        "id": node.id,
        "name": node.name,
        "serviceID": service,
        "lastSeen": datetime.fromtimestamp(node.last_seen, timezone.utc).isoformat(timespec="seconds").replace(
            "+00:00", "Z"
        ),
        "online": node.online,
        "connected": node.connected,
        "is_self": node.is_self,
        "version": node.version,
        "roles": list(node.roles),
    }


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:  # a unix socket peer has no IP
        return False
