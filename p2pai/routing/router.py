"""Per request: this node or a peer? Forward, pass the answer through, fail over.

A request is tried on at most MAX_ATTEMPTS candidates, best first. A candidate
that fails before anything reached the client (cannot connect, 5xx, full queue,
went offline) is skipped for the next one; a streamed answer that breaks after
it began is continued on another node (see continuation.py) or, when that is
not possible, ends with an explicit error event, never a clean-looking end.

No query of death: a peer whose model crashed on the request says so
(`model_crashed`), and that answer goes to the client as it is; a request whose
node died while working on it may be what killed it, so it travels to one more
node at most, mid-stream continuation included (Journey).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from ..backends.base import InvalidRequestError, ModelLoadError, ModelRestartingError, QueueFullError
from ..backends.tasks import TASKS, Task, task_not_served
from ..event_stream import DONE, EventStream
from ..metrics import CONTINUATIONS, FAILOVERS, FORWARDED_REQUESTS, PEER_FAILURES, PEER_LATENCY, labelled, peer_label
from ..protocol.figures import ModelFigures
from ..serving.manager import ModelManager, UnknownModelError
from ..swarm.payload import FileOffer, ModelOffer
from ..swarm.swarm import Swarm
from ..swarm.view import SwarmNode
from .answer import Answer, AnswerBroken
from .continuation import (
    CHAT_PATHS,
    CONTINUABLE_PATHS,
    Progress,
    Rewriter,
    continuable,
    continuation_request,
    progress,
)
from .forward import Forwarder, PeerUnavailable
from .metrics import PeerMetrics
from .placement import (
    DEFAULT_LOAD_S,
    PROBES_PER_ROUND,
    Candidate,
    Policy,
    another_round,
    load_wait,
    rank,
    rank_probed,
    settled,
    to_probe,
)
from .probe import PROBE_ABOVE, Prober, own_figures
from .relay import relay
from .streams import stream_kind
from .tunnel_http import TunnelResponse

log = logging.getLogger(__name__)

FORWARDED = web.RequestKey("p2pai_forwarded_by", str)  # set by the peer endpoint to the sender's id
PIN_HEADER = "X-P2PAI-Node"
MAX_ATTEMPTS = 3
MAX_LOST = 2
"""Nodes a request may be lost with (they died or froze working on it): the first, and one more."""
CRASHED = "model_crashed"
ERROR_CODE_HEADER = "X-P2PAI-Error-Code"
"""Where a node puts an error's code, in every API family's error shape (api/errors.py)."""
REFUSED = 401
"""A peer's refusal of this node's signature (clocks too far apart, say): a problem between this
node and that peer, never the client's, so another node is tried."""
RETRY_AFTER = 2
LOAD_GRACE_S = 30.0
"""A load this node triggered that has not shown up as loaded this long after it was expected is
forgotten (it failed, or took much longer): the node's own announcement says the rest."""
_PASSED_HEADERS = ("Content-Type", "Cache-Control", "X-Accel-Buffering", "Retry-After")

Local = Callable[[], Awaitable[web.StreamResponse]]


class NoNodeAvailable(Exception):
    """The model exists in the swarm but no node can take the request now."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.retry_after = RETRY_AFTER


class UnknownNodeError(LookupError):
    def __init__(self, pin: str) -> None:
        super().__init__(f"No node named or with the id {pin!r} is known to this swarm")
        self.pin = pin


@dataclass(slots=True)
class Target:
    candidate: Candidate
    urls: tuple[str, ...]  # empty for this node


@dataclass
class Hop:
    """One node a request was tried on, as the entry node saw it (a trace lists them)."""

    node: str
    name: str
    via: str
    """"local" (this node), "direct" (HTTPS to its peer endpoint) or "tunnel" (over libp2p)."""
    status: int | None = None
    """The answer's HTTP status; None if it never answered."""
    upstream_ms: float | None = None
    """Until the peer's response headers (forwarded hops only)."""
    error: str = ""
    continuation: bool = False
    """It continued a stream another node broke off."""


HOPS = web.RequestKey("p2pai_hops", list[Hop])
"""The hops of a request this node routed, in order, for its trace."""


@dataclass
class Journey:
    """How many nodes were lost while working on one request."""

    lost: int = 0
    hops: list[Hop] = field(default_factory=list)

    def lose(self) -> bool:
        """Count a node lost with the request; True if it may still go to another one."""
        self.lost += 1
        return self.lost < MAX_LOST


@dataclass(frozen=True)
class SwarmModel:
    """A model as the swarm offers it: /v1/models lists each once."""

    name: str
    nodes: tuple[str, ...]
    loaded_on: tuple[str, ...]
    backend: str
    tasks: tuple[Task, ...]
    """What at least one of its nodes serves."""
    on_disk: tuple[str, ...] = ()
    """Nodes that announce its file: peers can pull it from them."""
    file: FileOffer | None = None


class Router:
    def __init__(self, manager: ModelManager, swarm: Swarm, forwarder: Forwarder,
                 policy: Policy = Policy.LEAST_LOADED, rng: random.Random | None = None,
                 probe_above: int = PROBE_ABOVE, prober: Prober | None = None) -> None:
        self._manager = manager
        self._swarm = swarm
        self._forwarder = forwarder
        self._policy = policy
        self._probe_above = probe_above
        """Swarms of more nodes than this: ask candidates for their current figures (probe.py)."""
        self._prober = prober or Prober(forwarder)
        self._rng = rng or random.Random()
        self._outstanding: Counter[tuple[str, str]] = Counter()
        # (peer, model) -> (the peer's last announcement time, requests finished since): an
        # announcement still counts requests this node has seen finish after it was sent.
        self._finished: dict[tuple[str, str], tuple[float | None, int]] = {}
        self.metrics: defaultdict[str, PeerMetrics] = defaultdict(PeerMetrics)
        self._aborts: defaultdict[str, set[Callable[[], None]]] = defaultdict(set)
        self._watcher: asyncio.Task[None] | None = None
        self._loads: dict[tuple[str, str], float] = {}
        """(node, model) -> when the load this node's requests triggered there should be done (loop time)."""
        self._models: tuple[tuple[object, ...], list[SwarmModel]] | None = None

    async def start(self) -> None:
        self._watcher = asyncio.create_task(self._abort_on_offline(), name="router-offline-watch")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self._forwarder.close()

    # What the swarm offers

    def models(self) -> list[SwarmModel]:
        """Each model of the swarm once; recomputed only when the swarm's index or this node's models change."""
        key = (self._swarm.version, tuple(self._manager.names()), tuple(self._manager.loaded()))
        if self._models is None or self._models[0] != key:
            self._models = (key, self._list_models())
        return self._models[1]

    def _list_models(self) -> list[SwarmModel]:
        me = self._swarm.self_node()
        offered = self._swarm.offered()
        own = self._manager.names()  # live, not the last announcement
        models = []
        for name in sorted({*offered, *own}):
            entries = [(node, offer) for peer, offer in offered.get(name, {}).items()
                       if (node := self._swarm.serving_peer(peer)) is not None and node.online]
            if name in own:
                entries.insert(0, (me, self._own_offer(name)))
            if not entries:
                continue
            models.append(SwarmModel(
                name=name,
                nodes=tuple(node.id for node, _ in entries),
                loaded_on=tuple(node.id for node, offer in entries if self._loaded(node, offer)),
                backend=entries[0][1].backend,
                tasks=tuple(task for task in TASKS if any(task in offer.tasks for _, offer in entries)),
                on_disk=tuple(node.id for node, offer in entries if offer.file is not None),
                file=next((offer.file for _, offer in entries if offer.file is not None), None),
            ))
        return models

    def targets(self, model: str, task: Task | None, pin: str | None = None) -> list[Target]:
        """Where ``model`` can be served now for ``task`` (None: any of its tasks), best first, by
        the figures this node has.

        Costs the number of nodes offering ``model``, not the size of the swarm."""
        online = self._serving(model, task, pin)
        now = asyncio.get_running_loop().time()
        candidates = {node.id: (node, self._candidate(node, offer, now)) for node, offer in online}
        ranked = rank([c for _, c in candidates.values()], self._policy, self._rng)
        return [Target(c, tuple(candidates[c.node_id][0].endpoint_urls())) for c in ranked]

    async def placed(self, model: str, task: Task | None, pin: str | None = None) -> list[Target]:
        """As targets(); in a swarm of more than ``probe_above`` nodes, after asking rounds of
        candidates for their current figures (placement.to_probe), until one can start the
        request at once or PROBE_ROUNDS are done (placement.another_round). The ones that answered come first."""
        if pin or self._policy is not Policy.LEAST_LOADED or self._swarm.serving_count() <= self._probe_above:
            return self.targets(model, task, pin)
        online = {node.id: (node, offer) for node, offer in self._serving(model, task, None)}
        loop = asyncio.get_running_loop()
        now = loop.time()
        current = [self._candidate(node, offer, now) for node, offer in online.values() if node.is_self]
        announced = [self._candidate(node, offer, now) for node, offer in online.values() if not node.is_self]
        unanswered: list[Candidate] = []

        def fresh(peer: str, figures: ModelFigures) -> Candidate:
            node, offer = online[peer]
            return self._candidate(node, offer, loop.time(), figures)

        rounds = 0
        while another_round(rounds, current):
            asked = to_probe(announced, PROBES_PER_ROUND, self._rng)
            if not asked:
                break
            rounds += 1
            names = {c.node_id for c in asked}
            announced = [c for c in announced if c.node_id not in names]
            answers = await self._prober.round(model, [(c.node_id, tuple(online[c.node_id][0].endpoint_urls()))
                                                       for c in asked], lambda p, f: settled(fresh(p, f)))
            current += [fresh(peer, figures) for peer, figures in answers.items()]
            unanswered += [c for c in asked if c.node_id not in answers]
        ranked = rank_probed(current, announced + unanswered, self._policy, self._rng)
        return [Target(c, tuple(online[c.node_id][0].endpoint_urls())) for c in ranked]

    def _serving(self, model: str, task: Task | None, pin: str | None) -> list[tuple[SwarmNode, ModelOffer]]:
        """The online nodes (this one included) that serve ``model`` for ``task``, on node ``pin`` if given."""
        having = [(node, offer) for peer, offer in self._swarm.offers(model).items()
                  if (node := self._swarm.serving_peer(peer)) is not None]
        # Live, not the last announcement; this node's own view is built only where it has the model.
        if model in self._manager.names() and (me := self._swarm.self_node()).federated:
            having.append((me, self._own_offer(model)))
        if pin:
            pinned = self._swarm.find_serving(pin)
            if pinned is None:
                raise UnknownNodeError(pin)
            having = [(node, offer) for node, offer in having if node.id == pinned.id]
        if not having:
            raise UnknownModelError(model)
        if task is not None:
            serving = [(node, offer) for node, offer in having if task in offer.tasks]
            if not serving:
                raise task_not_served(model, task, [t for t in TASKS if any(t in o.tasks for _, o in having)])
            having = serving
        online = [(node, offer) for node, offer in having if node.online]
        if not online:
            raise NoNodeAvailable(f"every node serving {model!r} is offline")
        return online

    def _own_offer(self, name: str) -> ModelOffer:
        """What this node would announce for its model now (routing needs only the name and tasks)."""
        return ModelOffer(name=name, backend=self._manager.config(name).backend_name,
                          tasks=list(self._manager.tasks(name)))

    def _loaded(self, node: SwarmNode, offer: ModelOffer) -> bool:
        return self._manager.stats(offer.name).loaded if node.is_self else offer.loaded

    def _candidate(self, node: SwarmNode, offer: ModelOffer, now: float, current: ModelFigures | None = None
                   ) -> Candidate:
        """``node`` as a candidate for ``offer``'s model: by its ``current`` figures (a probe's answer;
        this node's own are always current), else by what it announced."""
        model = offer.name
        if node.is_self:
            current = own_figures(self._manager, model)
        if current is not None:
            loaded, loading, load_s, fits = current.loaded, current.loading, current.load_s, current.fits
            figures = (current.slots, current.in_flight, current.queued, current.decode_tps, current.answer_tokens)
        else:
            stamp, finished = self._finished.get((node.id, model), (None, 0))
            if stamp != self._swarm.last_seen(node.id):
                finished = 0
            in_flight = max(0, offer.in_flight - finished)
            queued = max(0, offer.queued - max(0, finished - offer.in_flight))
            loaded, loading, load_s, fits = offer.loaded, offer.loading, offer.load_s, offer.fits
            figures = (offer.slots, in_flight, queued, offer.decode_tps, offer.answer_tokens)
        slots, in_flight, queued, tps, answer_tokens = figures
        return Candidate(node.id, node.name, node.is_self, loaded, slots, in_flight, queued, tps,
                         self._outstanding[(node.id, model)], answer_tokens, load_s,
                         self._load_left(node.id, model, loaded, loading, load_s, now), fits)

    def _load_left(self, node_id: str, model: str, loaded: bool, loading: bool, load_s: float | None,
                   now: float) -> float | None:
        """Seconds left of a load of ``model`` there: one this node triggered, or one the node announces."""
        key = (node_id, model)
        ready_at = self._loads.get(key)
        if loaded or (ready_at is not None and now > ready_at + LOAD_GRACE_S):
            self._loads.pop(key, None)  # done, or it failed: judge the node by what it announces again
            return None
        if ready_at is not None:
            return max(0.0, ready_at - now)
        if loading:
            return (load_s if load_s is not None else DEFAULT_LOAD_S) / 2  # started at some time we do not know
        return None

    def _note_load(self, target: Target, model: str) -> None:
        """Remember that a request sent to a node where ``model`` is not loaded starts its load there."""
        candidate = target.candidate
        if not candidate.loaded and (candidate.node_id, model) not in self._loads:
            self._loads[(candidate.node_id, model)] = asyncio.get_running_loop().time() + load_wait(candidate)

    # Serving a request

    async def dispatch(self, request: web.Request, model: str | None, task: Task | None, local: Local,
                       pin: str | None = None) -> web.StreamResponse:
        """Answer locally or through a peer whose model serves ``task`` (on node ``pin`` when given,
        else the one X-P2PAI-Node names, if any). Requests from peers are always answered here (one hop)."""
        if FORWARDED in request or not model:
            return await local()
        targets = await self.placed(model, task, pin or request.headers.get(PIN_HEADER))
        failures = []
        journey = Journey()
        request[HOPS] = journey.hops
        for target in targets[:MAX_ATTEMPTS]:
            candidate = target.candidate
            if journey.hops and journey.hops[-1].via != "local":
                labelled(FAILOVERS, peer_label(journey.hops[-1].node)).inc()
            hop = Hop(candidate.node_id, candidate.name, "local" if candidate.is_self else "direct")
            journey.hops.append(hop)
            self._note_load(target, model)
            try:
                if candidate.is_self:
                    response = await self._local(local, model)
                else:
                    response = await self._forward(request, target, model, journey, hop)
                hop.status = response.status
                return response
            except (QueueFullError, ModelLoadError, ModelRestartingError, PeerUnavailable) as exc:
                hop.error = str(exc)
                if len(targets) == 1 and not isinstance(exc, PeerUnavailable):
                    raise  # this node was the only choice: its own error says it best
                failures.append(f"{target.candidate.name}: {exc}")
                log.info("%s could not take a request for %s: %s", target.candidate.name, model, exc)
                if isinstance(exc, PeerUnavailable) and exc.lost and not journey.lose():
                    break
        raise NoNodeAvailable(f"no node could take the request for {model!r} ({'; '.join(failures)})")

    def node_ids(self) -> list[str]:
        """The nodes of the swarm that answer requests, this one first."""
        return self._swarm.serving_ids()

    async def on_node(self, request: web.Request, node_id: str, local: Local) -> web.StreamResponse:
        """Answer on node ``node_id``, this one or a peer: for what only that node has (a stored
        response). No failover: no other node could answer."""
        if FORWARDED in request:
            return await local()
        node = self._swarm.self_node() if node_id == self._swarm.peer_id else self._swarm.serving_peer(node_id)
        if node is None:
            raise UnknownNodeError(node_id)
        if node.is_self:
            return await local()
        if not node.online:
            raise NoNodeAvailable(f"the node that has it ({node.name}) is offline")
        candidate = Candidate(node.id, node.name, False, True, 0, 0, 0, None)
        journey = Journey()
        request[HOPS] = journey.hops
        hop = Hop(node.id, node.name, "direct")
        journey.hops.append(hop)
        response = await self._forward(request, Target(candidate, tuple(node.endpoint_urls())), None, journey, hop)
        hop.status = response.status
        return response

    async def _local(self, local: Local, model: str) -> web.StreamResponse:
        """Answer here, counted like a forwarded request: while the model loads, its engine counts
        nothing, and a burst must not all pick this node because its queue looks empty."""
        key = (self._swarm.peer_id, model)
        self._outstanding[key] += 1
        try:
            return await local()
        finally:
            self._outstanding[key] -= 1

    async def _forward(self, request: web.Request, target: Target, model: str | None, journey: Journey, hop: Hop
                       ) -> web.StreamResponse:
        peer = target.candidate.node_id
        metrics = self.metrics[peer]
        label = peer_label(peer)
        loop = asyncio.get_running_loop()
        body = await request.read()
        metrics.started()
        labelled(FORWARDED_REQUESTS, label).inc()
        if model is not None:
            self._outstanding[(peer, model)] += 1
        started = loop.time()
        try:
            send = self._forwarder.send(
                peer, list(target.urls), request.method, request.path_qs, body, request.headers.get("Content-Type")
            )
            upstream = await self._abortable(peer, send)
            try:
                waited = loop.time() - started
                hop.via, hop.status, hop.upstream_ms = _via(upstream), upstream.status, round(waited * 1000, 2)
                if upstream.status == REFUSED:
                    raise PeerUnavailable(f"refused this node's signature: {(await _error_answer(upstream)).text}",
                                          lost=False)
                if upstream.status >= 500:
                    answer = await _error_answer(upstream)
                    if answer.code != CRASHED:
                        raise PeerUnavailable(f"answered {upstream.status}: {answer.text}", lost=False)
                    metrics.crashed += 1  # its model died of this request: another node would too
                metrics.answered(waited)
                labelled(PEER_LATENCY, label).observe(waited)
                return await self._relay(request, upstream, peer, waited, body, model, journey)
            finally:
                upstream.release()
        except PeerUnavailable as exc:
            self._failed(peer, str(exc), exc.lost)
            raise
        finally:
            metrics.finished()
            if model is not None:
                self._outstanding[(peer, model)] -= 1
                self._note_finished(peer, model)

    def _failed(self, peer: str, reason: str, lost: bool) -> None:
        self.metrics[peer].failed(reason, lost)
        labelled(PEER_FAILURES, peer_label(peer)).inc()

    def _note_finished(self, peer: str, model: str) -> None:
        seen = self._swarm.last_seen(peer)
        stamp, count = self._finished.get((peer, model), (seen, 0))
        self._finished[(peer, model)] = (seen, count + 1 if stamp == seen else 1)

    async def _abortable(self, peer: str, send: Awaitable[Answer]) -> Answer:
        """Wait for the peer's response headers, giving up if the peer goes offline meanwhile.

        The wait runs in this task, cancelled on abort as asyncio.timeout() does it: a task of
        its own would cost two more event-loop iterations per request (issue #4: added latency)."""
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        aborted = False

        def abort() -> None:
            nonlocal aborted
            if not aborted:
                aborted = True
                task.cancel()

        self._aborts[peer].add(abort)
        try:
            return await send
        except asyncio.CancelledError:
            if aborted and task.uncancel() <= cancelling:
                raise PeerUnavailable("it went offline while the request waited", lost=True) from None
            raise  # the client went away
        finally:
            self._aborts[peer].discard(abort)

    async def _relay(self, request: web.Request, upstream: Answer, peer: str, waited: float, body: bytes,
                     model: str | None, journey: Journey) -> web.StreamResponse:
        headers = {name: upstream.headers[name] for name in _PASSED_HEADERS if name in upstream.headers}
        headers.update((k, v) for k, v in upstream.headers.items() if k.lower().startswith("x-p2pai-"))
        headers["X-P2PAI-Entry"] = self._swarm.peer_id
        headers["X-P2PAI-Upstream-Ms"] = f"{waited * 1000:.1f}"
        if upstream.content_type != "text/event-stream":
            try:  # read whole before answering: a peer dying now is still a clean failover
                body = await upstream.read()
            except AnswerBroken as exc:
                raise PeerUnavailable(f"the answer broke off: {exc}", lost=True) from exc
            return web.Response(status=upstream.status, body=body, headers=headers)
        response = EventStream(status=upstream.status, headers=headers)
        writer = await response.prepare(request)
        assert writer is not None  # a response prepared once has its writer
        kind = stream_kind(request.path)
        # The body is parsed again (continuable()) only if the stream breaks: a long prompt costs the
        # entry a parse per request otherwise. Until then the pieces are kept as a continuation needs them.
        may_continue = model is not None and request.path in CONTINUABLE_PATHS
        relayed: list[bytes] | None = [] if may_continue or kind.keeps else None
        if not await self._pump(peer, upstream, relay(request, writer, upstream, keep=relayed, final=kind.final)):
            self._failed(peer, "the stream broke off", lost=True)
            original = continuable(request.path, body) if may_continue else None
            done = progress(b"".join(relayed)) if original is not None and relayed is not None else None
            if original is None or model is None or done is None or not journey.lose() or not await self._continue(
                request, writer, original, done, model, peer, journey
            ):
                await response.write(kind.broken(b"".join(relayed or ()), peer))
        await response.write_eof()  # a complete stream's relay has ended it already
        return response

    async def _pump(self, peer: str, upstream: Answer, relaying: Awaitable[bool]) -> bool:
        """Relay ``upstream``'s events as they come, cut off if the peer goes offline; True if it ended complete."""
        self._aborts[peer].add(upstream.close)
        try:
            return await relaying
        finally:
            self._aborts[peer].discard(upstream.close)

    async def _continue(self, request: web.Request, writer: AbstractStreamWriter, original: dict[str, Any],
                        done: Progress, model: str, failed: str, journey: Journey) -> bool:
        """Finish a broken stream on another node that has the model; False if none could (or the
        request has been lost with as many nodes as it may)."""
        path = request.path
        if done.finished:  # every token arrived, only the end marker was lost
            await writer.write(DONE)
            return True
        follow = continuation_request(path, original, done)
        if follow is None:
            await writer.write(DONE)
            return True
        try:
            targets = self.targets(model, "chat" if path in CHAT_PATHS else "completion")
        except (UnknownModelError, NoNodeAvailable, InvalidRequestError):
            return False
        for target in [t for t in targets if t.candidate.node_id != failed][:MAX_ATTEMPTS]:
            node = target.candidate.node_id
            urls = list(target.urls) or self._swarm.self_node().endpoint_urls()
            hop = Hop(node, target.candidate.name, "direct", continuation=True)
            journey.hops.append(hop)
            try:
                upstream = await self._abortable(node, self._forwarder.send(node, urls, "POST", path, follow,
                                                                             "application/json"))
            except PeerUnavailable as exc:
                hop.error = str(exc)
                log.info("%s could not continue a broken stream: %s", target.candidate.name, exc)
                if exc.lost and not journey.lose():
                    return False
                continue
            try:
                hop.via, hop.status = _via(upstream), upstream.status
                if upstream.status != 200:
                    continue
                labelled(CONTINUATIONS, peer_label(failed)).inc()
                log.info("continuing a broken stream of %s on %s", failed, target.candidate.name)
                rewrite = Rewriter(done, path in CHAT_PATHS).feed
                return await self._pump(node, upstream, relay(request, writer, upstream, rewrite=rewrite))
            finally:
                upstream.release()
        return False

    async def _abort_on_offline(self) -> None:
        events = self._swarm.overlay.subscribe()
        try:
            while True:
                event = await events.get()
                if event.kind in ("offline", "removed"):
                    for abort in list(self._aborts.get(event.member.peer_id, ())):
                        abort()
        finally:
            self._swarm.overlay.unsubscribe(events)


def _via(answer: Answer) -> str:
    return "tunnel" if isinstance(answer, TunnelResponse) else "direct"


@dataclass(frozen=True)
class ErrorAnswer:
    code: str | None
    text: str
    """The start of the body, for the log."""


async def _error_answer(upstream: Answer) -> ErrorAnswer:
    """An error answer's OpenAI error code and the start of its body; its body stays readable."""
    try:
        body = await upstream.read()
    except AnswerBroken as exc:
        raise PeerUnavailable(f"answered {upstream.status}, then its body broke off: {exc}", lost=True) from exc
    code = upstream.headers.get(ERROR_CODE_HEADER)
    if code is None:  # an older node: the code is in OpenAI's error body
        try:
            code = json.loads(body)["error"]["code"]
        except (ValueError, TypeError, KeyError, RecursionError):
            code = None
    return ErrorAnswer(code if isinstance(code, str) else None, body[:300].decode(errors="replace"))

