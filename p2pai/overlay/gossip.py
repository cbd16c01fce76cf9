"""Membership whose cost per node stays bounded as the swarm grows (a pure state machine).

The overlay (overlay.py) runs it over libp2p. Sending every node's full
announcement to every other node each second (the overlay's first protocol)
costs N announcements in and out per node per second. Here:

- Failure detection: each node sends a small heartbeat each second to its
  WATCHERS successors on the ring of member ids (in a swarm of up to
  SMALL_SWARM nodes: to everyone). A watcher that has heard nothing
  for HEARTBEAT_TIMEOUT pings the node once (SWIM's direct probe: the ring may
  look different from the other side) and, without an answer within
  PROBE_TIMEOUT, spreads a verdict that it is offline. Detection stays within
  about 3 s at any size; a wrongly accused node refutes by announcing again.
- Changes (a join, a new payload, a verdict) spread as rumours: a node that
  hears one first passes it on to FANOUT random neighbours (`neighbours`: a
  bounded set, so a node keeps few connections), and each second it tells one
  random neighbour which rumours it heard recently, so that one can ask for
  what it missed. An announcement is sealed and signed by its author
  (announcement.py): a relay cannot change it.
- A node announces a new payload at most as often as RUMOUR_BUDGET allows for
  the size of the swarm (about every N x size x FANOUT / budget seconds):
  large swarms learn live figures less often, never at more bytes per node.
  In a small swarm (every member watches every other) a node sends its
  announcements to everyone directly, within MIN_ANNOUNCE_GAP.
- A joining node gets the current announcements once from the member it joins through.
- A node announces again when its announcement is REFRESH_AFTER older than the gap, so that the
  announcements a joining node is handed are never too old to accept.
- At most ``max_members`` members are kept: an offline one makes room, else a newcomer is refused.

The transport is the caller's: `tick` and `receive` return (peer, message)
pairs to send, so the same code runs over libp2p or the in-memory network of
bench/simulate_swarm.py. The transport must authenticate the sender of each
message (libp2p's Noise does).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import struct
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pai.identity import Identity
from p2pai.overlay.announcement import MAX_CLOCK_SKEW, MAX_MESSAGE_BYTES, Announcement, Rejected, open_sealed, seal

WATCHERS = 6
SMALL_SWARM = 16
"""Up to this many nodes, every node watches every other and sends its announcements to all."""
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_TIMEOUT = 2.0
PROBE_TIMEOUT = 0.5
FANOUT = 3
RECENT_S = 10.0
"""Rumours this recent are listed in the digest a node sends each second."""
RUMOUR_BUDGET = 6 * 1024
"""Bytes per second of rumours about payload changes a node may cause swarm-wide, divided by N."""
MIN_ANNOUNCE_GAP = 0.1
MEMBER_TTL = 300.0
MAX_MEMBERS = 4096
REFRESH_AFTER = MAX_CLOCK_SKEW / 2
"""An announcement older than announce_gap() + this is sealed again (nothing else may have changed)."""

HEARTBEAT, PING, ACK, RUMOUR, VERDICT, DIGEST, WANT, JOIN, STATE = _KINDS = b"hpkavdwjs"
_SEQ = struct.Struct(">Q")
_KEY = struct.Struct(">8sQ")  # a rumour in a digest: the first 8 bytes of its peer id's hash, and its seq

Send = tuple[str, bytes]


@dataclass
class Peer:
    announcement: Announcement
    sealed: bytes
    heard: float
    """Last heartbeat, ack or announcement of its own (this node's clock)."""
    arrived: float
    """When its current announcement arrived (this node's clock)."""
    online: bool = True
    since: float = 0.0
    """When it went offline."""
    probed: float | None = None
    """When this node pinged it for want of heartbeats."""
    judged: int = -1
    """The sequence number of the last announcement it was judged offline after: an announcement of
    its up to that one (relayed late) does not bring it back; only a newer one does."""


@dataclass
class Counters:
    sent_messages: int = 0
    sent_bytes: int = 0
    received_messages: int = 0
    received_bytes: int = 0
    verified: int = 0
    accepted: int = 0
    """Announcements newer than what this node had."""
    rejected: Counter[str] = field(default_factory=Counter)
    """Announcements and messages dropped, by reason."""
    kinds: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Keys:
    seal_key: bytes
    discriminator: str


@dataclass(frozen=True)
class About:
    """What a node says of itself besides its payload."""

    name: str
    version: str = "gossip"
    roles: tuple[str, ...] = ()
    addrs: tuple[str, ...] = ()


class GossipNode:
    def __init__(self, identity: Identity, keys: Keys, about: About | str, payload: dict[str, Any], now: float,
                 rng: random.Random | None = None,
                 opener: Callable[[bytes, float, float], Announcement] | None = None,
                 small_swarm: int = SMALL_SWARM, max_members: int = MAX_MEMBERS) -> None:
        """``about``: a name alone is enough for a simulation. ``opener(sealed, now, max_age)`` checks a
        sealed announcement (default: announcement.open_sealed with ``keys``). ``small_swarm``: up to this
        many nodes, every node watches every other (lowered only to test the large-swarm protocol)."""
        self.identity = identity
        self.id = identity.peer_id
        self._keys = keys
        self._about = About(about) if isinstance(about, str) else about
        self._small_swarm = small_swarm
        self._max_members = max_members
        self._rng = rng or random.Random()
        self._open = opener or (lambda sealed, at, max_age: open_sealed(sealed, keys.seal_key, keys.discriminator,
                                                                         at, max_age))
        self.peers: dict[str, Peer] = {}
        self._ring: list[str] = [self.id]
        """Ids of online members and this node, sorted."""
        self._neighbours: list[str] | None = None
        """Cached until the ring changes."""
        self.ring_changes = 0
        """How often the ring changed: `neighbours()` and `small()` change only with it."""
        self._recent: deque[tuple[float, bytes]] = deque()
        self._seen: dict[bytes, float] = {}
        """Rumour keys heard (announcements and verdicts) -> when, oldest first; forgotten after RECENT_S * 3."""
        self._verdicts: dict[bytes, bytes] = {}
        """Verdict rumour keys -> the verdict message, to answer a member that missed one."""
        self._current: dict[bytes, str] = {}
        """Rumour key of each member's current announcement -> its peer id."""
        self._offline: dict[str, float] = {}
        """Members judged offline -> since when: pruned after MEMBER_TTL."""
        self._seq = int(now * 1_000_000)
        self._payload = payload
        self._sealed = self._seal(now)
        self._announced = now
        self._pending_payload = False
        self._next_heartbeat = now
        self.counters = Counters()
        self.listeners: list[Callable[[str, Peer | None], None]] = []
        """Called with (peer id, its entry or None when removed) on every change of a member."""

    # What the caller does

    def join(self, via: str) -> list[Send]:
        """Introduce this node to a member (its peer id); it answers with the swarm's announcements."""
        return self._out([(via, bytes([JOIN]) + self._sealed)])

    def set_payload(self, payload: dict[str, Any], now: float) -> list[Send]:
        """Announce a new payload, now or as soon as the budget allows (see `tick`)."""
        self._payload = payload
        self._pending_payload = True
        return self.tick(now) if now - self._announced >= self.announce_gap() else []

    def small(self) -> bool:
        """A swarm where every member watches every other: announcements go to everyone directly."""
        return len(self._ring) <= self._small_swarm

    def announce_gap(self) -> float:
        """Seconds between payload announcements at this swarm size."""
        if self.small():
            return MIN_ANNOUNCE_GAP
        return max(MIN_ANNOUNCE_GAP, len(self._ring) * len(self._sealed) * FANOUT / RUMOUR_BUDGET)

    def tick(self, now: float) -> list[Send]:
        """Call at least every 0.25 s: heartbeats, probes, verdicts, digests, pending announcements."""
        sends: list[Send] = []
        if now - self._announced >= self.announce_gap() + REFRESH_AFTER:
            self._pending_payload = True
        if self._pending_payload and now - self._announced >= self.announce_gap():
            self._pending_payload = False
            sends += self._announce(now)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT_INTERVAL
            beat = bytes([HEARTBEAT]) + _SEQ.pack(self._seq)
            sends += [(watcher, beat) for watcher in self._watchers_of(self.id)]
            sends += self._digest(now)
            for peer_id, since in list(self._offline.items()):
                if now - since > MEMBER_TTL:
                    self._remove(peer_id)
        for peer_id in self._watched():
            peer = self.peers[peer_id]
            if now - peer.heard <= HEARTBEAT_TIMEOUT:
                peer.probed = None
            elif peer.probed is None:
                peer.probed = now
                sends.append((peer_id, bytes([PING]) + _SEQ.pack(peer.announcement.seq)))
            elif now - peer.probed > PROBE_TIMEOUT:
                sends += self._verdict(peer_id, peer.announcement.seq, now, exclude=())
        return self._out(sends)

    def receive(self, sender: str, message: bytes, now: float) -> list[Send]:
        """A message ``sender`` (authenticated by the transport) sent this node."""
        self.counters.received_messages += 1
        self.counters.received_bytes += len(message)
        if not message or message[0] not in _KINDS:
            self.counters.rejected["unknown_message"] += 1
            return []
        kind, body = message[0], message[1:]
        known = self.peers.get(sender)
        if known is not None and known.online and kind in (HEARTBEAT, PING, ACK):
            known.heard = now
        sends: list[Send] = []
        if kind == HEARTBEAT and len(body) >= 8:
            seq = _SEQ.unpack(body[:8])[0]
            if known is None or seq > known.announcement.seq:  # missed its announcement: ask for it
                sends.append((sender, bytes([WANT]) + _key(sender, seq)))
            elif not known.online:  # judged offline (frozen a while?): tell it, so it announces again
                sends.append((sender, bytes([VERDICT]) + _SEQ.pack(known.announcement.seq) + sender.encode()))
        elif kind == PING:
            sends.append((sender, bytes([ACK]) + body[:8]))
        elif kind == RUMOUR:
            sends += self._rumour(sender, body, now)
        elif kind == VERDICT and len(body) > 8:
            seq, accused = _SEQ.unpack(body[:8])[0], body[8:].decode(errors="replace")
            sends += self._on_verdict(sender, accused, seq, now)
        elif kind == DIGEST:
            wants = [body[i:i + _KEY.size] for i in range(0, len(body) - _KEY.size + 1, _KEY.size)]
            missing = b"".join(key for key in wants if key not in self._seen)
            if missing:
                sends.append((sender, bytes([WANT]) + missing))
        elif kind == WANT:
            sends += self._answer_want(sender, body)
        elif kind == JOIN:
            sends += self._rumour(sender, body, now)
            everyone = [self._sealed, *(p.sealed for p in self.peers.values() if p.online)]
            sends += [(sender, bytes([STATE]) + part) for part in _batches(everyone)]
        elif kind == STATE:
            for sealed in _unframed(body):
                self._accept(sealed, now)
        return self._out(sends)

    def online(self) -> list[str]:
        return [peer_id for peer_id, peer in self.peers.items() if peer.online]

    # Inside

    def _seal(self, now: float) -> bytes:
        self._seq += 1
        about = self._about
        announcement = Announcement(self.id, about.name, about.version, list(about.roles), list(about.addrs),
                                    self._seq, now, self._payload)
        return seal(announcement, self.identity, self._keys.seal_key, self._keys.discriminator)

    def stagger(self, offset: float) -> None:
        """Pretend the last announcement was ``offset`` seconds earlier (a node joining a running swarm)."""
        self._announced -= offset

    def _announce(self, now: float) -> list[Send]:
        self._sealed = self._seal(now)
        self._announced = now
        self._remember(_key(self.id, self._seq), now)
        targets = self.neighbours() if self.small() else self._some(FANOUT, exclude=())
        return [(peer, bytes([RUMOUR]) + self._sealed) for peer in targets]

    def _rumour(self, sender: str, sealed: bytes, now: float) -> list[Send]:
        announcement = self._accept(sealed, now)
        if announcement is None:
            return []
        if announcement.peer_id == sender:
            self.peers[sender].heard = now
        if self.small() and announcement.peer_id == sender:
            return []  # its author sent it to everyone
        return [(peer, bytes([RUMOUR]) + sealed)
                for peer in self._some(FANOUT, exclude=(sender, announcement.peer_id))]

    def _accept(self, sealed: bytes, now: float) -> Announcement | None:
        """Apply an announcement if it is genuine and newer than what this node has; None otherwise."""
        try:
            # A member announces at most every announce_gap(): an announcement relayed (or handed to a
            # joining node) may be that old. Replays are refused by sequence number below.
            announcement = self._open(sealed, now, 2 * self.announce_gap() + MAX_CLOCK_SKEW)
        except Rejected as rejected:
            self.counters.rejected[rejected.reason] += 1
            return None
        self.counters.verified += 1
        peer_id = announcement.peer_id
        if peer_id == self.id:
            return None
        known = self.peers.get(peer_id)
        if known is not None and announcement.seq <= max(known.announcement.seq, known.judged):
            return None
        if known is None and len(self.peers) >= self._max_members and not self._make_room():
            self.counters.rejected["too_many_members"] += 1
            return None
        self.counters.accepted += 1
        key = _key(peer_id, announcement.seq)
        self._remember(key, now)
        self._current[key] = peer_id
        if known is None:
            known = self.peers[peer_id] = Peer(announcement, sealed, now, now)
        else:
            self._current.pop(_key(peer_id, known.announcement.seq), None)
            known.announcement, known.sealed, known.arrived = announcement, sealed, now
            known.heard = max(known.heard, now)
        if not known.online:
            known.online = True
            self._offline.pop(peer_id, None)
        self._place(peer_id, True)
        self._changed(peer_id)
        return announcement

    def _verdict(self, accused: str, seq: int, now: float, exclude: tuple[str, ...]) -> list[Send]:
        peer = self.peers.get(accused)
        # A verdict on a newer announcement than this node has seen counts too: it missed that one.
        if peer is None or not peer.online or seq < peer.announcement.seq:
            return []
        peer.online, peer.since, peer.probed, peer.judged = False, now, None, seq
        self._offline[accused] = now
        self._place(accused, False)
        message = bytes([VERDICT]) + _SEQ.pack(seq) + accused.encode()
        key = _verdict_key(accused, seq)
        self._remember(key, now)
        self._verdicts[key] = message
        self._changed(accused)
        # Verdicts are small and urgent: enough fanout that all hear it at once (e^-fanout miss it,
        # and they learn it from the next digest).
        fanout = FANOUT + math.ceil(math.log(len(self._ring) + 1))
        return [(target, message) for target in self._some(fanout, exclude=(*exclude, accused))]

    def _on_verdict(self, sender: str, accused: str, seq: int, now: float) -> list[Send]:
        if accused == self.id:  # wrongly accused (or frozen for a while): announce again, newer
            return self._announce(now) if seq >= self._seq else []
        return self._verdict(accused, seq, now, exclude=(sender,))

    def _digest(self, now: float) -> list[Send]:
        while self._recent and now - self._recent[0][0] > RECENT_S:
            self._recent.popleft()
        while self._seen:
            oldest = next(iter(self._seen))
            if now - self._seen[oldest] <= RECENT_S * 3:
                break
            del self._seen[oldest]
            self._verdicts.pop(oldest, None)
        if not self._recent:
            return []
        return [(peer, bytes([DIGEST]) + b"".join(key for _, key in self._recent)) for peer in self._some(1, ())]

    def _answer_want(self, sender: str, body: bytes) -> list[Send]:
        own = _key(self.id, self._seq)
        sends = []
        for i in range(0, len(body) - _KEY.size + 1, _KEY.size):
            key = body[i:i + _KEY.size]
            if key == own:
                sends.append((sender, bytes([RUMOUR]) + self._sealed))
            elif (peer := self.peers.get(self._current.get(key, ""))) is not None:
                sends.append((sender, bytes([RUMOUR]) + peer.sealed))
            elif (verdict := self._verdicts.get(key)) is not None:
                sends.append((sender, verdict))
        return sends

    def _remember(self, key: bytes, now: float) -> None:
        if key not in self._seen:
            self._seen[key] = now
            self._recent.append((now, key))

    def _place(self, peer_id: str, online: bool) -> None:
        index = bisect.bisect_left(self._ring, peer_id)
        present = index < len(self._ring) and self._ring[index] == peer_id
        if online and not present:
            self._ring.insert(index, peer_id)
        elif not online and present:
            del self._ring[index]
        else:
            return
        self._neighbours = None
        self.ring_changes += 1

    def _make_room(self) -> bool:
        """Forget the member offline the longest, if any is."""
        if not self._offline:
            return False
        self._remove(min(self._offline, key=self._offline.__getitem__))
        return True

    def _watchers_of(self, peer_id: str) -> list[str]:
        """The WATCHERS members after ``peer_id`` on the ring (everyone else in a small swarm)."""
        ring = self._ring
        if self.small():
            return [p for p in ring if p != peer_id]
        start = bisect.bisect_right(ring, peer_id)
        return [ring[(start + i) % len(ring)] for i in range(min(WATCHERS, len(ring) - 1))]

    def _watched(self) -> list[str]:
        """The members whose heartbeats this node checks: the WATCHERS before it on the ring."""
        ring = self._ring
        if self.small():
            return [p for p in ring if p != self.id]
        index = bisect.bisect_left(ring, self.id)
        return [ring[(index - i) % len(ring)] for i in range(1, min(WATCHERS, len(ring) - 1) + 1)]

    def neighbours(self) -> list[str]:
        """The members this node talks to: its ring successors and predecessors, and one member at each
        power-of-two distance along the ring (as Chord's fingers): about 2 x WATCHERS + log2(N), so
        the connections a node keeps stay few while a rumour still crosses the ring in log2(N) hops."""
        ring = self._ring
        if self.small():
            return [p for p in ring if p != self.id]
        if self._neighbours is None:
            index = bisect.bisect_left(ring, self.id)
            chosen = {*self._watchers_of(self.id), *self._watched()}
            distance = WATCHERS + 1
            while distance < len(ring):
                chosen.add(ring[(index + distance) % len(ring)])
                distance *= 2
            chosen.discard(self.id)
            self._neighbours = sorted(chosen)
        return self._neighbours

    def _some(self, count: int, exclude: tuple[str, ...]) -> list[str]:
        """``count`` random neighbours, none of ``exclude``."""
        pool = [p for p in self.neighbours() if p not in exclude]
        return self._rng.sample(pool, min(count, len(pool)))

    def _remove(self, peer_id: str) -> None:
        self._current.pop(_key(peer_id, self.peers.pop(peer_id).announcement.seq), None)
        self._offline.pop(peer_id, None)
        self._place(peer_id, False)
        for listener in self.listeners:
            listener(peer_id, None)

    def _changed(self, peer_id: str) -> None:
        for listener in self.listeners:
            listener(peer_id, self.peers[peer_id])

    def _out(self, sends: list[Send]) -> list[Send]:
        counters = self.counters
        for _, message in sends:
            counters.sent_messages += 1
            counters.sent_bytes += len(message)
            kind = chr(message[0])
            counters.kinds[kind] = counters.kinds.get(kind, 0) + len(message)
        return sends


def _key(peer_id: str, seq: int) -> bytes:
    return _KEY.pack(hashlib.blake2b(peer_id.encode(), digest_size=8).digest(), seq)


def _verdict_key(peer_id: str, seq: int) -> bytes:
    return _key("offline:" + peer_id, seq)


def _framed(sealed: bytes) -> bytes:
    return len(sealed).to_bytes(4, "big") + sealed


def _batches(sealed: list[bytes]) -> list[bytes]:
    """Framed announcements in messages of at most MAX_MESSAGE_BYTES (what a transport takes at once)."""
    batches, current = [], b""
    for item in sealed:
        framed = _framed(item)
        if current and len(current) + len(framed) >= MAX_MESSAGE_BYTES:
            batches.append(current)
            current = b""
        current += framed
    return [*batches, current] if current else batches


def _unframed(body: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset + 4 <= len(body):
        length = int.from_bytes(body[offset:offset + 4], "big")
        items.append(body[offset + 4:offset + 4 + length])
        offset += 4 + length
    return items


