"""Watching a node: GET /metrics (Prometheus), GET /api/traces and POST /api/traces/clear (LocalAI's
shapes), and the middleware that times every request and keeps the traces.

The layers record their events into p2pai.metrics as they happen; what is a state rather than an
event (queues, slots, decode speed, members online, what the overlay and the workers counted) is
read here, at scrape time, so it costs nothing between scrapes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from ..metrics import API_CALL, OTHER, REGISTRY, labelled, model_label, path_label, peer_label
from ..protocol.localai import TraceList
from ..routing.router import FORWARDED
from .errors import APIError
from .keys import require_admin
from .replies import json_reply
from .state import NodeState
from .traces import UNTRACED_METHODS, exchange

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

METRICS_PATH = "/metrics"
UNTRACED_PATHS = frozenset({"/api/traces/clear"})
UNAUTHORIZED = 401
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000

observe_routes = web.RouteTableDef()


def observer(peer: bool) -> Middleware:
    """The outermost middleware of an app (it sees the final status): every request timed into
    LocalAI's `api_call` histogram (by method and route, never by raw path), and a trace kept of
    each that does work. Refused callers are not traced (a request without a valid key; on the peer
    endpoint, ``peer``, one without a valid signature): they must not push the others' traces out."""

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        response = None
        error = None
        try:
            response = await handler(request)
            return response
        except BaseException as exc:
            error = repr(exc)
            raise
        finally:
            # Recorded on the event loop's next turn, once aiohttp has sent the answer the handler
            # returned: no client waits for its own trace (about 30 µs per request here).
            asyncio.get_running_loop().call_soon(_record, request, response, time.perf_counter() - started, error,
                                                 peer)

    return observe


def _record(request: web.Request, response: web.StreamResponse | None, seconds: float, error: str | None,
            peer: bool) -> None:
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else "unmatched"
    if path != METRICS_PATH:
        method = request.method if request.method in METHODS else OTHER
        labelled(API_CALL, method, path_label(path)).observe(seconds)
    if (request.method not in UNTRACED_METHODS and path not in UNTRACED_PATHS
            and (FORWARDED in request if peer else response is None or response.status != UNAUTHORIZED)):
        NodeState.of(request).traces.record(request, response, seconds, error)


@observe_routes.get(METRICS_PATH)
async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(_Scrape(NodeState.of(request))),
                        headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


@observe_routes.get("/api/traces")
async def list_traces(request: web.Request) -> web.Response:
    """LocalAI's paging: `limit` (default 50, at most 1000, 0 for all), `offset`, `full` (bodies);
    the total in X-Total-Count. Bad values fall back to the defaults, as LocalAI's do. Admin only
    when keys are set: traces show what every client asked."""
    state = NodeState.of(request)
    require_admin(request, state.api_keys, state.admin_keys, "Reading traces")
    offset = _integer(request, "offset", 0)
    limit = min(_integer(request, "limit", DEFAULT_LIMIT), MAX_LIMIT)
    full = _boolean(request, "full")
    traces, total = state.traces.page(offset, limit)
    return json_reply(TraceList([exchange(trace, full) for trace in traces]), headers={
        "X-Total-Count": str(total), "X-Trace-Offset": str(offset), "X-Trace-Limit": str(limit),
        "Cache-Control": "no-store"})


@observe_routes.post("/api/traces/clear")
async def clear_traces(request: web.Request) -> web.Response:
    state = NodeState.of(request)
    require_admin(request, state.api_keys, state.admin_keys, "Clearing traces")
    state.traces.clear()
    return web.Response(status=204)


def _boolean(request: web.Request, name: str) -> bool:
    """A query parameter that, when given, must be true or false (400 otherwise)."""
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false"):
        raise APIError(400, f"{name} must be true or false, not {raw[:40]!r}", param=name)
    return raw == "true"


def _integer(request: web.Request, name: str, default: int) -> int:
    """A query parameter that, when given, must be a whole number, 0 or more (400 otherwise)."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise APIError(400, f"{name} must be a whole number from 0 to 999999999, not {raw[:40]!r}", param=name)
    return int(raw)


class _Scrape:
    """What one scrape reports: the recorded events, then this node's live figures."""

    def __init__(self, state: NodeState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
        yield from self._models()
        if self._state.swarm is not None:
            yield from self._swarm()

    def _models(self) -> Iterator[Metric]:
        state = self._state
        info = GaugeMetricFamily("p2pai_node_info", "This node", labels=["node_id", "name", "version"])
        name = state.swarm.self_node().name if state.swarm is not None else ""
        info.add_metric([state.node_id, name, state.version], 1)
        yield info
        families = {
            "loaded": GaugeMetricFamily("p2pai_model_loaded", "1 while the model is loaded", labels=["model"]),
            "slots": GaugeMetricFamily("p2pai_model_slots", "Requests the model decodes together", labels=["model"]),
            "in_use": GaugeMetricFamily("p2pai_model_slots_in_use", "Slots generating now", labels=["model"]),
            "queued": GaugeMetricFamily("p2pai_model_queue_depth", "Requests waiting for a slot", labels=["model"]),
            "tps": GaugeMetricFamily("p2pai_model_decode_tokens_per_second",
                                     "Recent decode speed, all slots together", labels=["model"]),
        }
        for name in state.manager.names():
            stats = state.manager.stats(name)
            label = [model_label(name)]
            families["loaded"].add_metric(label, int(stats.loaded))
            families["slots"].add_metric(label, stats.slots)
            families["in_use"].add_metric(label, stats.in_flight)
            families["queued"].add_metric(label, stats.queued)
            if stats.decode_tps is not None:
                families["tps"].add_metric(label, stats.decode_tps)
        yield from families.values()

    def _swarm(self) -> Iterator[Metric]:
        swarm = self._state.swarm
        assert swarm is not None
        peers = swarm.peers()
        online = GaugeMetricFamily("p2pai_overlay_members_online", "Other members of the swarm seen online")
        online.add_metric([], sum(peer.online for peer in peers))
        yield online
        members = GaugeMetricFamily("p2pai_overlay_members", "Other members known (online or not yet pruned)")
        members.add_metric([], len(peers))
        yield members
        up = GaugeMetricFamily("p2pai_peer_up", "1 while a member is online, 0 once it is not (until pruned)",
                               labels=["peer", "name"])
        for node in peers:
            if (label := peer_label(node.id)) != OTHER:  # a state has one sample per member, never a sum
                up.add_metric([label, node.name[:64]], int(node.online))
        yield up
        stats = swarm.stats()
        connections = GaugeMetricFamily("p2pai_overlay_connections", "libp2p connections to members")
        connections.add_metric([], stats["connections"])
        yield connections
        received = CounterMetricFamily("p2pai_overlay_announcements_received",
                                       "Announcements from members that were accepted")
        received.add_metric([], stats["accepted"])
        yield received
        dropped = CounterMetricFamily("p2pai_overlay_announcements_dropped",
                                      "Announcements refused or dropped, by reason", labels=["reason"])
        for reason, count in sorted(stats["dropped"].items()):
            dropped.add_metric([str(reason)], count)
        yield dropped
        sessions = CounterMetricFamily("p2pai_rpc_worker_sessions", "Sessions an RPC worker served (it announces "
                                       "them)", labels=["worker", "name"])
        moved = CounterMetricFamily("p2pai_rpc_worker_bytes", "Bytes through an RPC worker's relay (it announces "
                                    "them), by direction", labels=["worker", "name", "direction"])
        for node in peers:
            if node.worker is None:
                continue
            served = node.worker.served
            if (label := peer_label(node.id)) == OTHER:
                continue
            worker = [label, node.name[:64]]
            sessions.add_metric(worker, served.get("sessions", 0))
            moved.add_metric([*worker, "in"], served.get("bytes_in", 0))
            moved.add_metric([*worker, "out"], served.get("bytes_out", 0))
        yield sessions
        yield moved
