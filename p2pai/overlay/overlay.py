"""The overlay facade the node uses from asyncio: start, stop, announce a
payload, list members.

Policy lives here, on the asyncio side: the membership protocol (gossip.py:
what to announce, which messages to believe, who is alive), and whom to dial.
The trio thread (OverlayHost) only moves bytes and dials what it is told to.

A member is shown online while the protocol judges it so and, for a member this
node keeps a connection to (every member in a small swarm, its ring neighbours
in a large one), while that connection is up: libp2p notices a killed peer in
about 0.2 s, the protocol a frozen one within about 3 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pai.identity import Identity
from p2pai.metrics import ANNOUNCEMENTS_SENT, TUNNEL_BYTES, labelled
from p2pai.overlay.addresses import parse_tcp
from p2pai.overlay.announcement import MAX_ADDRS, MAX_PAYLOAD_BYTES
from p2pai.overlay.gossip import SMALL_SWARM, About, GossipNode, Keys, Peer, Send
from p2pai.overlay.membership import MAX_PEERS, AddressBook, Member, MemberEvent

if TYPE_CHECKING:
    from p2pai.overlay.discovery import MdnsDiscovery
    from p2pai.overlay.host import OverlayHost
    from p2pai.overlay.trio_bridge import TrioBridge
    from p2pai.token import NetworkKeys

log = logging.getLogger(__name__)

TunnelHandler = Callable[[str, bytes], AsyncIterator[bytes]]

TICK_INTERVAL = 0.1  # gossip asks for 0.25 s at most; 0.1 keeps a frozen peer's detection well under 3 s
SWEEP_INTERVAL = 0.25  # dial targets
EVENT_QUEUE_SIZE = 1000
MAX_QUEUED_FRAMES = 256  # frames handed to asyncio but not yet checked; more are dropped
STOP_TIMEOUT = 1.0  # per stage (mDNS, trio thread): stop() stays under 3 s


@dataclass
class OverlayConfig:
    data_dir: Path
    keys: NetworkKeys
    name: str
    version: str
    roles: list[str]
    listen: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"])
    bootstrap: list[str] = field(default_factory=list)  # multiaddrs ending in /p2p/<peer id>
    mdns: bool = True
    mdns_interfaces: list[str] | None = None  # None = all interfaces
    small_swarm: int = SMALL_SWARM
    """Up to this many nodes every node watches and dials every other; lowered only to test the large-swarm protocol."""


class Overlay:
    def __init__(self, config: OverlayConfig) -> None:
        self.config = config
        self.peer_id = ""  # set by start()
        self._identity: Identity | None = None
        self._bridge: TrioBridge | None = None
        self._host: OverlayHost | None = None
        self._discovery: MdnsDiscovery | None = None
        self._gossip: GossipNode | None = None
        self._early: list[Callable[[], None]] = []
        """What the trio side handed over before the gossip node existed (a bootstrap peer connects and
        sends its join while libp2p starts): replayed in order once it does."""
        self._members: dict[str, Member] = {}
        self._events: list[tuple[str, Member]] = []
        """Changes made by the current gossip call, published when it returns."""
        self._unjudged: set[str] = set()
        """Members whose online state may have changed since the last gossip call returned (see _refresh)."""
        self._near: frozenset[str] = frozenset()
        """The gossip neighbours (this node dials them), as of the ring change `_near_at` counts."""
        self._near_at = -1
        self._remote: dict[str, str | None] = {}
        """Peer id -> the IP its messages last came from over its own connection."""
        self._connected: frozenset[str] = frozenset()
        self._learned = False
        """A member's addresses were learnt: dial targets to push."""
        self._book: AddressBook | None = None
        self._addrs: list[str] = []
        self._listening: list[str] = []
        self._payload: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribers: list[asyncio.Queue[MemberEvent]] = []
        self._listeners: list[Callable[[MemberEvent], None]] = []
        self._pushed_targets: tuple[dict[str, list[str]], frozenset[str]] | None = None
        self._connections = 0
        self._running = False  # trio callbacks may still arrive after stop()
        self._frame_slots = threading.BoundedSemaphore(MAX_QUEUED_FRAMES)
        self._tunnel_handler: TunnelHandler | None = None
        self._tunnel_tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen and start announcing; dialing peers continues in the background."""
        # Imported here, not at the top: trio, zeroconf and libp2p (imported in the
        # trio thread) cost about 0.7 s that `p2pai --help` should not pay.
        from p2pai.overlay.discovery import MdnsDiscovery
        from p2pai.overlay.host import OverlayHost
        from p2pai.overlay.trio_bridge import TrioBridge
        from p2pai.overlay.tunnel import TunnelServer

        config = self.config
        identity = self._identity = Identity.load_or_create(config.data_dir)
        self.peer_id = identity.peer_id
        self._book = AddressBook(self.peer_id, now=time.time())
        bridge = self._bridge = TrioBridge()
        self._host = OverlayHost(
            self._identity,
            config.keys.psk_hex,
            config.listen,
            config.bootstrap,
            MAX_PEERS,
            on_frame=self._hand_over_frame,
            on_connections=lambda peers: bridge.to_asyncio(self._on_connections, peers),
            tunnel=TunnelServer(lambda peer, request, send: bridge.to_asyncio(self._serve_tunnel, peer, request, send)),
        )
        await bridge.start()
        self._running = True
        try:
            self._listening, self._addrs = await bridge.start_task(self._host.serve)
            about = About(config.name, config.version, tuple(config.roles), tuple(self._addrs[:MAX_ADDRS]))
            # Seals the first announcement: raises now if name or roles are too big. Its sequence
            # numbers (microseconds since the epoch) stay above what peers saw before a restart.
            self._gossip = GossipNode(identity, Keys(config.keys.seal_key, config.keys.discriminator), about,
                                      self._payload, time.time(), small_swarm=config.small_swarm)
        except BaseException:
            self._running = False
            await bridge.stop(STOP_TIMEOUT)
            raise
        self._gossip.listeners.append(self._on_member)
        early, self._early = self._early, []
        for call in early:
            call()
        self._tasks = [
            asyncio.create_task(self._tick_forever(), name="overlay-gossip"),
            asyncio.create_task(self._sweep_forever(), name="overlay-sweep"),
        ]
        for task in self._tasks:
            task.add_done_callback(_log_failure)
        if config.mdns:
            discovery = MdnsDiscovery(
                self.peer_id, self._addrs, config.keys.discriminator, config.mdns_interfaces, self._on_discovered
            )
            try:
                await discovery.start()
            except OSError as exc:  # e.g. an interface that is gone; bootstrap may still work
                log.warning("mDNS discovery is off: %r", exc)
                await discovery.stop()
            else:
                self._discovery = discovery

    async def stop(self) -> None:
        self._running = False
        for task in [*self._tasks, *self._tunnel_tasks]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._discovery is not None:
            try:
                await asyncio.wait_for(self._discovery.stop(), STOP_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - stopping goes on whatever mDNS raises
                log.warning("stopping mDNS: %r", exc)
            self._discovery = None
        if self._bridge is not None:
            await self._bridge.stop(STOP_TIMEOUT)

    def set_payload(self, payload: dict[str, Any]) -> None:
        """Replace the announced payload (JSON-able, at most 32 KiB as JSON)."""
        text = json.dumps(payload)
        if len(text.encode()) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"the payload exceeds {MAX_PAYLOAD_BYTES} bytes as JSON")
        copy = json.loads(text)
        if copy != self._payload:
            self._payload = copy
            if self._gossip is not None:
                self._gossiped(self._gossip.set_payload(copy, time.time()))

    def members(self) -> list[Member]:
        """Known peers (not this node): online ones and offline ones not yet pruned."""
        return [member.snapshot() for member in self._members.values()]

    def last_seen(self, peer_id: str) -> float | None:
        """When the current announcement of ``peer_id`` arrived (None: not a member)."""
        member = self._members.get(peer_id)
        return member.last_seen if member is not None else None

    def listening(self) -> list[tuple[str, int]]:
        """The (IP, port) pairs libp2p listens on, wildcard IPs included."""
        return [(str(ip), port) for ip, port, _ in filter(None, map(parse_tcp, self._listening))]

    def self_member(self) -> Member:
        if self._identity is None:
            raise RuntimeError("the overlay is not started")
        return Member(
            peer_id=self.peer_id,
            name=self.config.name,
            version=self.config.version,
            roles=list(self.config.roles),
            addrs=list(self._addrs),
            payload=self._payload,  # replaced by set_payload, never changed in place: read it only
            last_seen=time.time(),
            online=True,
            connected=True,
        )

    def subscribe(self) -> asyncio.Queue[MemberEvent]:
        """A queue of membership changes; when it is full the oldest are dropped."""
        queue: asyncio.Queue[MemberEvent] = asyncio.Queue(EVENT_QUEUE_SIZE)
        self._subscribers.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[MemberEvent]) -> None:
        self._subscribers.remove(queue)

    def listen(self, listener: Callable[[MemberEvent], None]) -> None:
        """Call ``listener`` with each membership change as it happens (on the asyncio loop; keep it cheap)."""
        self._listeners.append(listener)

    @property
    def identity(self) -> Identity:
        """This node's identity, loaded by start(); the RPC relay signs with it too."""
        assert self._identity is not None, "start() first"
        return self._identity

    def set_tunnel_handler(self, handler: TunnelHandler) -> None:
        """Answer tunnelled requests from peers: ``handler(peer_id, request)`` yields the answer's bytes."""
        self._tunnel_handler = handler

    async def tunnel(self, peer_id: str, request: bytes) -> AsyncIterator[bytes]:
        """Send ``request`` to a connected peer over libp2p and yield its answer's bytes.

        Raises TunnelBroken unless the answer ends with the explicit end marker; NotDelivered
        when the peer cannot have worked on the request (see overlay/tunnel.py).
        """
        from p2pai.overlay.tunnel import DATA, END, ERROR, NotDelivered, TunnelBroken

        assert self._bridge is not None and self._host is not None
        bridge = self._bridge
        labelled(TUNNEL_BYTES, "sent").inc(len(request))
        arrived: asyncio.Queue[tuple[int, bytes] | asyncio.Future[None]] = asyncio.Queue()
        exchange = asyncio.ensure_future(
            bridge.run(self._host.exchange, peer_id, request, lambda kind, data: bridge.to_asyncio(
                arrived.put_nowait, (kind, data)))
        )
        # Frames are handed over in order before the exchange's result, so this comes last.
        exchange.add_done_callback(arrived.put_nowait)
        answering = False  # DATA arrived: the peer's handler passed the request on
        try:
            while True:
                item = await arrived.get()
                if isinstance(item, asyncio.Future):
                    error = None if item.cancelled() else item.exception()
                    broken = NotDelivered if isinstance(error, NotDelivered) else TunnelBroken
                    raise broken(f"the tunnel to {peer_id} broke: {error!r}")
                kind, data = item
                if kind == DATA:
                    answering = True
                    labelled(TUNNEL_BYTES, "received").inc(len(data))
                    yield data
                elif kind == END:
                    return
                elif kind == ERROR and not answering:
                    raise NotDelivered(f"{peer_id} could not take the request: {data.decode(errors='replace')}")
                else:
                    raise TunnelBroken(f"{peer_id} could not answer: {data.decode(errors='replace')}")
        finally:
            exchange.cancel()

    def _serve_tunnel(self, peer: str, request: bytes, send: Any) -> None:
        task = asyncio.create_task(self._answer_tunnel(peer, request, send), name="overlay-tunnel")
        self._tunnel_tasks.add(task)
        task.add_done_callback(self._tunnel_tasks.discard)

    async def _answer_tunnel(self, peer: str, request: bytes, send: Any) -> None:
        """Run the handler and push its bytes, then END or ERROR, into the trio stream's channel."""
        import trio

        from p2pai.overlay.trio_bridge import BridgeClosed
        from p2pai.overlay.tunnel import DATA, END, ERROR, MAX_DATA_BYTES

        assert self._bridge is not None
        bridge = self._bridge
        labelled(TUNNEL_BYTES, "received").inc(len(request))
        try:
            if self._tunnel_handler is None:
                raise LookupError("this node answers no tunnelled requests")
            async for chunk in self._tunnel_handler(peer, request):
                labelled(TUNNEL_BYTES, "sent").inc(len(chunk))
                for start in range(0, len(chunk), MAX_DATA_BYTES):
                    await bridge.run(send.send, (DATA, chunk[start : start + MAX_DATA_BYTES]))
            await bridge.run(send.send, (END, b""))
        except (trio.BrokenResourceError, trio.ClosedResourceError, BridgeClosed):
            pass  # the asking peer went away
        except Exception as exc:  # noqa: BLE001 - a task boundary: the asker gets the error, the node goes on
            log.warning("tunnelled request from %s failed: %r", peer, exc)
            with contextlib.suppress(Exception):
                await bridge.run(send.send, (ERROR, repr(exc).encode()[:1000]))
        finally:
            with contextlib.suppress(BridgeClosed):
                bridge.call_soon(send.close)

    def stats(self) -> dict[str, Any]:
        """Counters for diagnostics: connections, accepted and dropped announcements and messages,
        dials, and the hints (mDNS answers) in the address book and dropped."""
        host_drops = self._host.drops if self._host is not None else {}
        counters = self._gossip.counters if self._gossip is not None else None
        return {
            "connections": self._connections,
            "accepted": counters.accepted if counters is not None else 0,
            "received": counters.received_messages if counters is not None else 0,
            "sent": counters.sent_messages if counters is not None else 0,
            "dropped": {**(counters.rejected if counters is not None else {}), **host_drops},
            "small_swarm": self._gossip.small() if self._gossip is not None else True,
            "dials": self._host.dials if self._host is not None else 0,
            "hints": self._book.hints() if self._book is not None else 0,
            "hints_dropped": {**(self._book.dropped_hints if self._book is not None else {}),
                              **(self._discovery.dropped if self._discovery is not None else {})},
        }

    async def _tick_forever(self) -> None:
        assert self._gossip is not None
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            self._gossiped(self._gossip.tick(time.time()))

    async def _sweep_forever(self) -> None:
        assert self._book is not None
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.time()
            for member in self._members.values():
                if member.online:
                    self._book.touch(member.peer_id, now)
            self._push_dial_targets(now)

    def _gossiped(self, sends: list[Send]) -> None:
        """Send what a gossip call asked for, and publish the membership changes it made."""
        if sends:
            assert self._bridge is not None and self._host is not None
            self._bridge.call_soon(self._host.send, sends)
            ANNOUNCEMENTS_SENT.inc(len(sends))
        self._judge_changed()
        if self._learned:
            self._learned = False
            self._push_dial_targets(time.time())
        events, self._events = self._events, []
        self._publish([MemberEvent(kind, member.snapshot()) for kind, member in events])

    def _on_member(self, peer_id: str, peer: Peer | None) -> None:
        """Called by the gossip node (inside a gossip call) when a member changes."""
        member = self._members.get(peer_id)
        if peer is None:
            if member is not None:
                del self._members[peer_id]
                self._remote.pop(peer_id, None)
                self._events.append(("removed", member))
            return
        self._unjudged.add(peer_id)
        a = peer.announcement
        if member is None:
            member = self._members[peer_id] = Member(peer_id, "", "", [], [], {}, peer.arrived, online=False,
                                                     connected=peer_id in self._connected,
                                                     remote=self._remote.get(peer_id))
        elif member.last_seen == peer.arrived:
            return  # its online state changed; _refresh tells
        elif (member.name, member.version, member.roles, member.addrs, member.payload) != (
                a.name, a.version, a.roles, a.addrs, a.payload):
            self._events.append(("updated", member))
        member.name, member.version, member.roles, member.addrs = a.name, a.version, a.roles, a.addrs
        member.payload, member.last_seen = a.payload, peer.arrived
        assert self._book is not None
        self._book.learn(peer_id, a.addrs, time.time())  # signed by the member itself
        self._learned = True

    def _judge_changed(self) -> None:
        """Judge online or not the members whose gossip entry, connection or neighbourhood changed:
        the work of a gossip call grows with what it changed, not with the swarm."""
        gossip = self._gossip
        if gossip is not None and gossip.ring_changes != self._near_at:
            near = frozenset(gossip.neighbours())
            self._unjudged |= near ^ self._near
            self._near, self._near_at = near, gossip.ring_changes
        for peer_id in self._unjudged:
            if (member := self._members.get(peer_id)) is not None:
                self._refresh(member)
        self._unjudged.clear()

    def _refresh(self, member: Member) -> None:
        """Judge ``member`` online or not."""
        assert self._gossip is not None
        peer = self._gossip.peers.get(member.peer_id)
        online = peer is not None and peer.online and (member.connected or member.peer_id not in self._near)
        if online != member.online:
            member.online = online
            self._events.append(("online" if online else "offline", member))

    def _hand_over_frame(self, sender: str, frame: bytes, remote: str | None) -> bool:
        """In the trio thread: queue a frame for checking, unless too many are queued."""
        if not self._frame_slots.acquire(blocking=False):
            return False
        assert self._bridge is not None
        self._bridge.to_asyncio(self._on_frame, sender, frame, remote)
        return True

    def _on_frame(self, sender: str, frame: bytes, remote: str | None) -> None:
        if self._running and self._gossip is None:
            self._early.append(functools.partial(self._on_frame, sender, frame, remote))  # its slot kept till then
            return
        self._frame_slots.release()
        if not self._running:
            return
        assert self._gossip is not None
        if self._remote.get(sender) != remote:
            self._remote[sender] = remote
            if (member := self._members.get(sender)) is not None:
                member.remote = remote  # where its announced endpoints may be (swarm/endpoints.py)
                self._events.append(("updated", member))
        self._gossiped(self._gossip.receive(sender, frame, time.time()))

    def _on_connections(self, peers: frozenset[str]) -> None:
        if not self._running:
            return
        if self._gossip is None:
            self._early.append(functools.partial(self._on_connections, peers))
            return
        self._connections = len(peers)
        new = peers - self._connected
        for peer_id in peers ^ self._connected:
            if (member := self._members.get(peer_id)) is not None:
                member.connected = peer_id in peers
                self._unjudged.add(peer_id)
        self._connected = peers
        for gone in self._remote.keys() - peers - self._members.keys():
            del self._remote[gone]
        sends: list[Send] = []
        for peer_id in new:  # a peer this node does not know online: introduce each to the other
            known = self._gossip.peers.get(peer_id)
            if known is None or not known.online:
                sends += self._gossip.join(peer_id)
        self._gossiped(sends)

    def _on_discovered(self, peer_id: str, addrs: list[str]) -> None:
        if not self._running:
            return
        assert self._book is not None
        now = time.time()
        self._book.hint(peer_id, addrs, now)
        self._push_dial_targets(now)

    def _push_dial_targets(self, now: float) -> None:
        """Every member in a small swarm (offline ones too, until pruned: a restarted one comes
        back); in a large one, its ring neighbours only. And the hints, once each."""
        assert self._book is not None and self._bridge is not None and self._host is not None
        assert self._gossip is not None
        everyone, hints = self._book.targets(now), self._book.unconfirmed()
        if not self._gossip.small():
            keep = hints | set(self._gossip.neighbours())
            everyone = {peer_id: addrs for peer_id, addrs in everyone.items() if peer_id in keep}
        targets = everyone, hints
        if targets != self._pushed_targets:
            self._bridge.call_soon(self._host.set_dial_targets, *targets)
            self._pushed_targets = targets

    def _publish(self, events: list[MemberEvent]) -> None:
        for event in events:
            for listener in self._listeners:
                listener(event)
        for queue in self._subscribers:
            for event in events:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(event)


def _log_failure(task: asyncio.Task[None]) -> None:
    """Without this, a crashed heartbeat would only show as this node going offline."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed", task.get_name(), exc_info=task.exception())
