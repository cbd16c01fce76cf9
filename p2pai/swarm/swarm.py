"""Run this node's overlay membership: keep its announcement current, list the swarm.

Routing reads the swarm on every request, so the serving peers are kept in an
index (model -> peers offering it) updated on each membership change, never
rebuilt per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..backends.rpc.workers import WorkerInfo
from ..event_loop import wait_set
from ..overlay import Member, MemberEvent, Overlay
from .endpoints import OwnAddresses, vetted
from .payload import ModelOffer, NodePayload
from .view import SwarmNode, WorkerOffer, parse_payload

log = logging.getLogger(__name__)

PUBLISH_INTERVAL = 0.5  # how often live figures are re-read; only changes are announced


class Swarm:
    """The overlay plus a payload source. `payload()` is called on the asyncio loop
    and must be cheap; changes are announced within PUBLISH_INTERVAL (or at once
    after `refresh()`)."""

    def __init__(self, overlay: Overlay, payload: Callable[[], dict[str, Any]]) -> None:
        self.overlay = overlay
        self._payload = payload
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._parsed: dict[str, tuple[tuple[float, str | None], tuple[NodePayload, WorkerOffer | None]]] = {}
        self._self_parsed: tuple[dict[str, Any], tuple[NodePayload, WorkerOffer | None]] | None = None
        self._own = OwnAddresses()
        self.rejected: Counter[str] = Counter()
        """Announced payload parts this node refused (malformed, or hosts it will not connect to)."""
        self._serving: dict[str, SwarmNode] = {}
        """Federated peers, online or not yet pruned, as of their last membership change."""
        self._offers: dict[str, dict[str, ModelOffer]] = {}
        """Model name -> peer id -> what that peer announced for it."""
        self.version = 0
        """Changes whenever a peer's models, their tasks, or where they are loaded change (not with live
        figures): what the router's list of the swarm's models is cached by."""
        overlay.listen(self._index)

    @property
    def peer_id(self) -> str:
        return self.overlay.peer_id

    async def start(self) -> None:
        await self.overlay.start()
        self.overlay.set_payload(self._payload())
        self._task = asyncio.create_task(self._publish_forever(), name="swarm-publish")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.overlay.stop()

    def set_own_addresses(self, binds: list[tuple[str, int]]) -> None:
        """This node's listening sockets besides libp2p's (client API, peer endpoint): no member's
        announcement may make this node connect to one of them."""
        self._own = OwnAddresses([*binds, *self.overlay.listening()])
        self._parsed.clear()
        for member in self.overlay.members():  # vetted again against the new addresses
            self._index(MemberEvent("updated", member))

    def offers(self, model: str) -> dict[str, ModelOffer]:
        """Peer id -> offer, for the federated peers that announce ``model`` (read only)."""
        return self._offers.get(model, {})

    def offered(self) -> dict[str, dict[str, ModelOffer]]:
        """Every model the federated peers announce (read only)."""
        return self._offers

    def serving_peer(self, peer_id: str) -> SwarmNode | None:
        return self._serving.get(peer_id)

    def serving_ids(self) -> list[str]:
        """The federated nodes (this one first, then the peers online or not, until pruned)."""
        return [self.peer_id, *self._serving]

    def serving_count(self) -> int:
        """len(serving_ids()), without building the list (the router asks on every request)."""
        return 1 + len(self._serving)

    def find_serving(self, pin: str) -> SwarmNode | None:
        """A federated node (this one included) by id or name."""
        me = self.self_node()
        if pin in (me.id, me.name):
            return me
        return self._serving.get(pin) or next((n for n in self._serving.values() if n.name == pin), None)

    def _index(self, event: MemberEvent) -> None:
        member = event.member
        old = self._serving.pop(member.peer_id, None)
        before = _listing(old)
        if old is not None:
            for offer in old.payload.models:
                holders = self._offers.get(offer.name, {})
                holders.pop(old.id, None)
                if not holders:
                    self._offers.pop(offer.name, None)
        if event.kind != "removed":
            node = SwarmNode.from_member(member, parsed=self._parsed_payload(member))
            if node.federated:
                self._serving[node.id] = node
                for offer in node.payload.models:
                    self._offers.setdefault(offer.name, {})[node.id] = offer
        else:
            self._parsed.pop(member.peer_id, None)
        if _listing(self._serving.get(member.peer_id)) != before:
            self.version += 1

    def stats(self) -> dict[str, Any]:
        return {**self.overlay.stats(), "rejected": dict(self.rejected)}

    def refresh(self) -> None:
        """Announce the current payload now, e.g. after a model loaded."""
        self._wake.set()

    def self_node(self) -> SwarmNode:
        member = self.overlay.self_member()
        if self._self_parsed is None or self._self_parsed[0] is not member.payload:  # set_payload replaces it
            self._self_parsed = (member.payload, parse_payload(member.payload))
        return SwarmNode.from_member(member, is_self=True, parsed=self._self_parsed[1])

    def nodes(self) -> list[SwarmNode]:
        """This node first, then the peers (offline ones until they are pruned)."""
        return [self.self_node(), *self.peers()]

    def peers(self) -> list[SwarmNode]:
        members = self.overlay.members()
        for gone in self._parsed.keys() - {m.peer_id for m in members}:
            del self._parsed[gone]
        return [SwarmNode.from_member(m, parsed=self._parsed_payload(m)) for m in members]

    def last_seen(self, peer_id: str) -> float | None:
        return self.overlay.last_seen(peer_id)

    def _parsed_payload(self, member: Member) -> tuple[NodePayload, WorkerOffer | None]:
        """Parsed and vetted once per announcement (and where it connects from): routing reads the swarm
        on every request."""
        cached = self._parsed.get(member.peer_id)
        stamp = (member.last_seen, member.remote)
        if cached is None or cached[0] != stamp:
            parsed = vetted(parse_payload(member.payload, self.rejected), member.remote, self._own, self.rejected)
            cached = self._parsed[member.peer_id] = (stamp, parsed)
        return cached[1]

    def workers(self) -> list[WorkerInfo]:
        """The llama.cpp RPC workers of the swarm, for models placed on them."""
        return [info for node in self.peers() if (info := node.worker_info()) is not None]

    async def _publish_forever(self) -> None:
        while True:
            await wait_set(self._wake, PUBLISH_INTERVAL)
            self._wake.clear()
            try:
                self.overlay.set_payload(self._payload())
            except Exception:  # a bad figure must not stop the heartbeat's payload updates
                log.exception("could not build this node's announcement")


def _listing(node: SwarmNode | None) -> object:
    """What /v1/models shows of a node."""
    if node is None:
        return None
    return node.online, [(offer.name, offer.backend, offer.loaded, offer.tasks) for offer in node.payload.models]
