"""The overlay facade the node uses from asyncio: start, stop, announce a
payload, list members.

Policy lives here, on the asyncio side: what to announce, which frames to
believe, who is alive and whom to dial. The trio thread (OverlayHost) only
moves bytes and dials what it is told to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pai.identity import Identity
from p2pai.metrics import ANNOUNCEMENTS_SENT, TUNNEL_BYTES, labelled
from p2pai.overlay.addresses import parse_tcp
from p2pai.overlay.announcement import (
    MAX_ADDRS,
    MAX_HINTED_PEERS,
    MAX_PAYLOAD_BYTES,
    Announcement,
    Rejected,
    open_sealed,
    seal,
)
from p2pai.overlay.membership import MAX_HINT_ADDRS, MAX_PEERS, AddressBook, Member, MemberEvent, Membership

if TYPE_CHECKING:
    from p2pai.overlay.discovery import MdnsDiscovery
    from p2pai.overlay.host import OverlayHost
    from p2pai.overlay.trio_bridge import TrioBridge
    from p2pai.token import NetworkKeys

log = logging.getLogger(__name__)

TunnelHandler = Callable[[str, bytes], AsyncIterator[bytes]]

ANNOUNCE_INTERVAL = 1.0  # announcements double as the heartbeat
MIN_ANNOUNCE_GAP = 0.1  # coalesces bursts of changes
SWEEP_INTERVAL = 0.25
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


class Overlay:
    def __init__(self, config: OverlayConfig) -> None:
        self.config = config
        self.peer_id = ""  # set by start()
        self._identity: Identity | None = None
        self._bridge: TrioBridge | None = None
        self._host: OverlayHost | None = None
        self._discovery: MdnsDiscovery | None = None
        self._membership = Membership()
        self._book: AddressBook | None = None
        self._addrs: list[str] = []
        self._listening: list[str] = []
        self._payload: dict[str, Any] = {}
        self._seq = 0
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribers: list[asyncio.Queue[MemberEvent]] = []
        self._listeners: list[Callable[[MemberEvent], None]] = []
        self._pushed_targets: tuple[dict[str, list[str]], frozenset[str]] | None = None
        self._connections = 0
        self._counts: Counter[str] = Counter()
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
        self._identity = Identity.load_or_create(config.data_dir)
        self.peer_id = self._identity.peer_id
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
            # Microseconds since the epoch: stays above what peers saw before a restart.
            self._seq = time.time_ns() // 1000
            first = self._sealed_announcement()  # raises now if name or roles are too big
        except BaseException:
            self._running = False
            await bridge.stop(STOP_TIMEOUT)
            raise
        bridge.call_soon(self._host.broadcast, first)
        ANNOUNCEMENTS_SENT.inc()
        self._tasks = [
            asyncio.create_task(self._announce_forever(), name="overlay-announce"),
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
            self._changed.set()

    def members(self) -> list[Member]:
        """Known peers (not this node): online ones and offline ones not yet pruned."""
        return self._membership.members()

    def last_seen(self, peer_id: str) -> float | None:
        """When the last announcement of ``peer_id`` arrived (None: not a member)."""
        return self._membership.last_seen(peer_id)

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
        """Counters for diagnostics: connections, accepted and dropped announcements, dials,
        and the hints (mDNS answers, other members' lists) in the address book and dropped."""
        host_drops = self._host.drops if self._host is not None else {}
        return {
            "connections": self._connections,
            "accepted": self._counts["accepted"],
            "dropped": {**{k: v for k, v in self._counts.items() if k != "accepted"}, **host_drops},
            "dials": self._host.dials if self._host is not None else 0,
            "hints": self._book.hints() if self._book is not None else 0,
            "hints_dropped": {**(self._book.dropped_hints if self._book is not None else {}),
                              **(self._discovery.dropped if self._discovery is not None else {})},
        }

    def _sealed_announcement(self) -> bytes:
        assert self._identity is not None
        self._seq += 1
        hints = self._membership.online_addrs()
        if len(hints) > MAX_HINTED_PEERS:  # a random share each time still reaches everyone
            hints = dict(random.sample(sorted(hints.items()), MAX_HINTED_PEERS))
        announcement = Announcement(
            peer_id=self.peer_id,
            name=self.config.name,
            version=self.config.version,
            roles=list(self.config.roles),
            addrs=self._addrs[:MAX_ADDRS],
            seq=self._seq,
            timestamp=time.time(),
            payload=self._payload,
            peers={peer: addrs[:MAX_HINT_ADDRS] for peer, addrs in hints.items()},
        )
        keys = self.config.keys
        return seal(announcement, self._identity, keys.seal_key, keys.discriminator)

    async def _announce_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sent = loop.time()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), ANNOUNCE_INTERVAL)
            await asyncio.sleep(max(0.0, sent + MIN_ANNOUNCE_GAP - loop.time()))
            self._changed.clear()
            assert self._bridge is not None and self._host is not None
            self._bridge.call_soon(self._host.broadcast, self._sealed_announcement())
            ANNOUNCEMENTS_SENT.inc()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.time()
            self._publish(self._membership.sweep(now))
            self._push_dial_targets(now)

    def _hand_over_frame(self, sender: str, frame: bytes, remote: str | None) -> bool:
        """In the trio thread: queue a frame for checking, unless too many are queued."""
        if not self._frame_slots.acquire(blocking=False):
            return False
        assert self._bridge is not None
        self._bridge.to_asyncio(self._on_frame, sender, frame, remote)
        return True

    def _on_frame(self, sender: str, frame: bytes, remote: str | None) -> None:
        self._frame_slots.release()
        if not self._running:
            return
        assert self._book is not None
        now = time.time()
        keys = self.config.keys
        try:
            announcement = open_sealed(frame, keys.seal_key, keys.discriminator, now)
            events = self._membership.accept(sender, announcement, now, remote)
        except Rejected as rejected:
            self._counts[rejected.reason] += 1
            return
        self._counts["accepted"] += 1
        self._book.learn(announcement.peer_id, announcement.addrs, now)
        for peer_id, addrs in announcement.peers.items():
            self._book.hint(peer_id, addrs, now)
        self._push_dial_targets(now)
        self._publish(events)

    def _on_connections(self, peers: frozenset[str]) -> None:
        if not self._running:
            return
        self._connections = len(peers)
        self._publish(self._membership.set_connected(peers, time.time()))

    def _on_discovered(self, peer_id: str, addrs: list[str]) -> None:
        if not self._running:
            return
        assert self._book is not None
        now = time.time()
        self._book.hint(peer_id, addrs, now)
        self._push_dial_targets(now)

    def _push_dial_targets(self, now: float) -> None:
        assert self._book is not None and self._bridge is not None and self._host is not None
        targets = self._book.targets(now), self._book.unconfirmed()
        if targets != self._pushed_targets:
            self._bridge.call_soon(self._host.set_dial_targets, *targets)
            self._pushed_targets = targets

    def _publish(self, events: list[MemberEvent]) -> None:
        if any(event.kind != "updated" for event in events):
            self._changed.set()  # tell the others promptly whom we now see online
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
