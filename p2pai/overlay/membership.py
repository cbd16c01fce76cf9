"""Who is in the swarm, judged by this node's own clock (asyncio side).

A member is online while it is connected and its last announcement (sent
every second, so also the heartbeat) is younger than HEARTBEAT_TIMEOUT; libp2p
alone never notices a frozen peer. Offline members are pruned after MEMBER_TTL.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from p2pai.identity import is_peer_id
from p2pai.overlay.addresses import dialable
from p2pai.overlay.announcement import Announcement, Rejected
from p2pai.overlay.ratelimit import TokenBucket

HEARTBEAT_TIMEOUT = 2.0
MEMBER_TTL = 300.0
MAX_PEERS = 256
# Hints (mDNS answers, other members' lists of peers) are what a stranger on the LAN can forge.
MAX_HINTS = 32
HINT_TTL = 10.0  # a real peer announces itself within about a second of being dialled
HINT_RATE = 2.0  # new hints per second on average...
HINT_BURST = 16  # ...and at once: a swarm of 16 found by one mDNS browse joins at once
MAX_HINT_ADDRS = 4


@dataclass
class Member:
    peer_id: str
    name: str
    version: str
    roles: list[str]
    addrs: list[str]
    payload: dict[str, Any]
    last_seen: float  # time.time() when its last announcement arrived
    online: bool
    connected: bool
    remote: str | None = None
    """The IP its connection comes from, as this node sees it (not what it announces)."""

    def snapshot(self) -> Member:
        """A copy the caller may keep. The payload is shared, not copied (routing reads the swarm on
        every request): an announcement replaces it, nothing changes it in place; read it only."""
        return replace(self, roles=list(self.roles), addrs=list(self.addrs))


@dataclass(frozen=True)
class MemberEvent:
    kind: str  # "online", "offline", "updated" or "removed"
    member: Member


class Membership:
    def __init__(
        self,
        max_peers: int = MAX_PEERS,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
        ttl: float = MEMBER_TTL,
    ) -> None:
        self._max_peers = max_peers
        self._heartbeat_timeout = heartbeat_timeout
        self._ttl = ttl
        self._members: dict[str, Member] = {}
        self._last_seq: dict[str, int] = {}

    def accept(self, sender: str, announcement: Announcement, now: float, remote: str | None = None
               ) -> list[MemberEvent]:
        """Apply a verified announcement that ``sender``'s connection, from IP ``remote``, delivered.

        Raises Rejected for a replay (sequence number not above the last one
        seen), for an announcement relayed from another peer, or when the table
        is full of online members.
        """
        peer_id = announcement.peer_id
        if peer_id != sender:
            raise Rejected("wrong_sender")  # announcements travel only from their author
        if announcement.seq <= self._last_seq.get(peer_id, -1):
            raise Rejected("replay")
        events: list[MemberEvent] = []
        member = self._members.get(peer_id)
        if member is None:
            if len(self._members) >= self._max_peers:
                events += self._evict_oldest_offline()
            member = Member(peer_id, "", "", [], [], {}, now, online=False, connected=True)
            self._members[peer_id] = member
        elif _describes_differently(member, announcement):
            events.append(MemberEvent("updated", member))
        self._last_seq[peer_id] = announcement.seq
        member.name, member.version = announcement.name, announcement.version
        member.roles, member.addrs = announcement.roles, announcement.addrs
        member.payload = announcement.payload
        member.remote = remote
        member.last_seen = now
        member.connected = True  # the announcement just came over a direct connection
        events += self._refresh(member, now)
        return [MemberEvent(e.kind, e.member.snapshot()) for e in events]

    def _evict_oldest_offline(self) -> list[MemberEvent]:
        offline = [m for m in self._members.values() if not m.online]
        if not offline:
            raise Rejected("too_many_peers")
        return self._remove(min(offline, key=lambda m: m.last_seen))

    def set_connected(self, peer_ids: frozenset[str], now: float) -> list[MemberEvent]:
        for member in self._members.values():
            member.connected = member.peer_id in peer_ids
        return self.sweep(now)

    def sweep(self, now: float) -> list[MemberEvent]:
        """Re-judge liveness and prune members offline for longer than the TTL."""
        events: list[MemberEvent] = []
        for member in list(self._members.values()):
            events += self._refresh(member, now)
            if not member.online and now - member.last_seen > self._ttl:
                events += self._remove(member)
        return [MemberEvent(e.kind, e.member.snapshot()) for e in events]

    def _refresh(self, member: Member, now: float) -> list[MemberEvent]:
        online = member.connected and now - member.last_seen <= self._heartbeat_timeout
        if online == member.online:
            return []
        member.online = online
        return [MemberEvent("online" if online else "offline", member)]

    def _remove(self, member: Member) -> list[MemberEvent]:
        del self._members[member.peer_id]
        del self._last_seq[member.peer_id]
        return [MemberEvent("removed", member)]

    def last_seen(self, peer_id: str) -> float | None:
        member = self._members.get(peer_id)
        return member.last_seen if member is not None else None

    def members(self) -> list[Member]:
        return [m.snapshot() for m in self._members.values()]

    def online_addrs(self) -> dict[str, list[str]]:
        return {m.peer_id: list(m.addrs) for m in self._members.values() if m.online}


def _describes_differently(member: Member, a: Announcement) -> bool:
    return (member.name, member.version, member.roles, member.addrs, member.payload) != (
        a.name,
        a.version,
        a.roles,
        a.addrs,
        a.payload,
    )


@dataclass
class _Entry:
    addrs: list[str]
    heard: float
    confirmed: bool
    """True once the peer's own authenticated announcement arrived; False for a hint."""


class AddressBook:
    """Peers to stay connected to and where to dial them.

    A peer's own authenticated announcement confirms it; anything else (an mDNS
    answer, another member's list of peers) is a hint: bounded in number
    (max_hints) and in rate (HINT_RATE, which bounds the dials hints cause),
    forgotten unless the peer's own announcement follows within ``hint_ttl``,
    and never taking the place of a confirmed peer: a full book makes room by
    dropping its oldest hint, and refuses a new peer when only confirmed ones
    are left. A confirmed entry not heard of for ``ttl`` is forgotten.
    """

    def __init__(self, self_id: str, max_peers: int = MAX_PEERS, ttl: float = MEMBER_TTL,
                 max_hints: int = MAX_HINTS, hint_ttl: float = HINT_TTL, now: float = 0.0) -> None:
        self._self_id = self_id
        self._max_peers = max_peers
        self._ttl = ttl
        self._max_hints = max_hints
        self._hint_ttl = hint_ttl
        self._entries: dict[str, _Entry] = {}
        self._hint_rate = TokenBucket(HINT_RATE, HINT_BURST, now)
        self.dropped_hints: Counter[str] = Counter()

    def learn(self, peer_id: str, addrs: list[str], now: float) -> None:
        """What a peer's own authenticated announcement says about it."""
        if peer_id == self._self_id or not is_peer_id(peer_id):
            return
        usable = dialable(addrs, peer_id)
        if not usable:
            return
        if peer_id not in self._entries and len(self._entries) >= self._max_peers and not self._drop_oldest_hint():
            return
        self._entries[peer_id] = _Entry(usable, now, confirmed=True)

    def hint(self, peer_id: str, addrs: list[str], now: float) -> None:
        """Where someone else says a peer is; ignored for a peer already in the book (a hint
        neither renews another hint nor changes what a confirmed peer said)."""
        if peer_id == self._self_id or not is_peer_id(peer_id) or peer_id in self._entries:
            return
        usable = dialable(addrs, peer_id)[:MAX_HINT_ADDRS]
        if not usable:
            return
        if len(self._entries) >= self._max_peers or self.hints() >= self._max_hints:
            self.dropped_hints["full"] += 1
        elif not self._hint_rate.take(now):
            self.dropped_hints["rate_limited"] += 1
        else:
            self._entries[peer_id] = _Entry(usable, now, confirmed=False)

    def hints(self) -> int:
        return sum(not entry.confirmed for entry in self._entries.values())

    def unconfirmed(self) -> frozenset[str]:
        return frozenset(peer_id for peer_id, entry in self._entries.items() if not entry.confirmed)

    def targets(self, now: float) -> dict[str, list[str]]:
        """The current entries, after forgetting expired ones."""
        for peer_id, entry in list(self._entries.items()):
            if now - entry.heard > (self._ttl if entry.confirmed else self._hint_ttl):
                del self._entries[peer_id]
                if not entry.confirmed:
                    self.dropped_hints["unconfirmed"] += 1
        return {peer_id: list(entry.addrs) for peer_id, entry in self._entries.items()}

    def _drop_oldest_hint(self) -> bool:
        hints = [(entry.heard, peer_id) for peer_id, entry in self._entries.items() if not entry.confirmed]
        if not hints:
            return False
        del self._entries[min(hints)[1]]
        self.dropped_hints["displaced"] += 1
        return True
