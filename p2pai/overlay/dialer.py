"""Keep this node connected to every peer it knows an address of (trio side).

New peers are dialed at once, lost ones redialed with capped exponential
backoff: a restarted peer comes back within seconds while a dead one costs
one failed dial every few seconds until the overlay forgets it. A peer only
hinted at (an mDNS answer) is dialed once: if that fails, it is not
dialed again while it stays a hint.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from libp2p.abc import IHost

log = logging.getLogger(__name__)

DIAL_TIMEOUT = 3.0  # per address; a PSK mismatch would otherwise hang for ~40 s
MIN_BACKOFF = 0.5
MAX_BACKOFF = 5.0
# When two peers learn of each other at the same moment (mDNS, hints), only the
# one with the smaller peer id dials at once; two simultaneous dials would
# leave two connections, as py-libp2p does not deduplicate them. The other
# dials if nothing came after YIELD_DELAY: a newcomer's own mDNS browse often
# hears of the others a second after they heard of it (1.5 s here made mDNS
# joins take 1.2 s more).
YIELD_DELAY = 0.4
WAKE_INTERVAL = 0.5


class Dialer:
    def __init__(self, host: IHost, bootstrap: dict[str, list[str]]) -> None:
        self._host = host
        self._self_id = str(host.get_id())
        self._bootstrap = {p: a for p, a in bootstrap.items() if p != self._self_id}
        self._targets: dict[str, list[str]] = dict(self._bootstrap)
        self._next_attempt: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._dialing: set[str] = set()
        self._once: frozenset[str] = frozenset()
        self._given_up: set[str] = set()
        self._wake = trio.Event()
        self.dials = 0
        """Dial attempts so far, one per address tried."""

    def set_targets(self, targets: dict[str, list[str]], once: frozenset[str] = frozenset()) -> None:
        """Replace the peers to stay connected to (bootstrap peers always stay); those in
        ``once`` are dialed once only."""
        merged = dict(targets)
        for peer_id, addrs in self._bootstrap.items():  # learned addresses first: newer
            merged[peer_id] = list(dict.fromkeys(merged.get(peer_id, []) + addrs))
        merged.pop(self._self_id, None)
        self._targets = merged
        self._once = once - set(self._bootstrap)
        self._given_up &= set(merged) & self._once
        for gone in set(self._next_attempt) - set(self._targets):
            del self._next_attempt[gone]
            self._backoff.pop(gone, None)
        self._wake.set()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                self._dial_due(nursery)
                with trio.move_on_after(WAKE_INTERVAL):
                    await self._wake.wait()
                self._wake = trio.Event()

    def _dial_due(self, nursery: trio.Nursery) -> None:
        now = trio.current_time()
        connected = {str(peer) for peer in self._host.get_connected_peers()}
        for peer_id, addrs in self._targets.items():
            if peer_id in connected or peer_id in self._dialing or peer_id in self._given_up:
                continue
            if peer_id not in self._next_attempt:
                dials_first = peer_id in self._bootstrap or self._self_id < peer_id
                self._next_attempt[peer_id] = now if dials_first else now + YIELD_DELAY
            if self._next_attempt[peer_id] <= now:
                self._dialing.add(peer_id)
                nursery.start_soon(self._dial, peer_id, addrs)

    async def _dial(self, peer_id: str, addrs: list[str]) -> None:
        from libp2p.peer.id import ID
        from multiaddr import Multiaddr

        try:
            peer = ID.from_base58(peer_id)  # the overlay only passes valid ids
            for addr in addrs:
                self.dials += 1
                try:
                    with trio.fail_after(DIAL_TIMEOUT):
                        await self._host.get_network().dial_addr(Multiaddr(addr), peer)
                except Exception as exc:  # noqa: BLE001 - libp2p raises many types for one failure
                    # Once per outage at INFO; the retries, and hints (anyone on the LAN can forge
                    # them), only at DEBUG.
                    level = logging.DEBUG if peer_id in self._backoff or peer_id in self._once else logging.INFO
                    log.log(level, "cannot dial %s at %s: %r", peer_id, addr, exc)
                    continue
                self._backoff.pop(peer_id, None)
                return
            if peer_id in self._once:
                self._given_up.add(peer_id)
                return
            delay = min(self._backoff.get(peer_id, MIN_BACKOFF / 2) * 2, MAX_BACKOFF)
            self._backoff[peer_id] = delay
            if peer_id in self._targets:
                self._next_attempt[peer_id] = trio.current_time() + delay
        finally:
            self._dialing.discard(peer_id)
