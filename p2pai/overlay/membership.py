"""The members of the swarm as the node sees them, and the address book of whom to dial
(asyncio side). Who is a member and who is alive is the protocol's (gossip.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from p2pai.identity import is_peer_id
from p2pai.overlay.addresses import dialable
from p2pai.overlay.gossip import MAX_MEMBERS, MEMBER_TTL
from p2pai.overlay.ratelimit import TokenBucket

MAX_PEERS = 256
"""libp2p connections; a member keeps that many in a small swarm, its ring neighbours in a large one."""
# Hints (mDNS answers) are what a stranger on the LAN can forge.
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
    last_seen: float  # time.time() when its current announcement arrived
    online: bool
    connected: bool
    remote: str | None = None
    """The IP its own connection comes from, as this node sees it (not what it announces; None until it
    sent this node something directly)."""

    def snapshot(self) -> Member:
        """A copy the caller may keep. The payload is shared, not copied (routing reads the swarm on
        every request): an announcement replaces it, nothing changes it in place; read it only."""
        return replace(self, roles=list(self.roles), addrs=list(self.addrs))


@dataclass(frozen=True)
class MemberEvent:
    kind: str  # "online", "offline", "updated" or "removed"
    member: Member


@dataclass
class _Entry:
    addrs: list[str]
    heard: float
    confirmed: bool
    """True once the peer's own authenticated announcement arrived; False for a hint."""


class AddressBook:
    """Peers to stay connected to and where to dial them.

    A peer's own authenticated announcement confirms it; anything else (an mDNS
    answer) is a hint: bounded in number
    (max_hints) and in rate (HINT_RATE, which bounds the dials hints cause),
    forgotten unless the peer's own announcement follows within ``hint_ttl``,
    and never taking the place of a confirmed peer: a full book makes room by
    dropping its oldest hint, and refuses a new peer when only confirmed ones
    are left. A confirmed entry not heard of for ``ttl`` is forgotten.
    """

    def __init__(self, self_id: str, max_peers: int = MAX_MEMBERS, ttl: float = MEMBER_TTL,
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

    def touch(self, peer_id: str, now: float) -> None:
        """A confirmed peer is still a member (it may not announce again for minutes in a large swarm)."""
        entry = self._entries.get(peer_id)
        if entry is not None and entry.confirmed:
            entry.heard = now

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
