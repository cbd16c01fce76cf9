"""LAN discovery over mDNS with our own AsyncZeroconf (asyncio side).

Not libp2p's mDNS: that one uses sync zeroconf on every interface and blocks
its thread for ~1.5 s. The TXT record carries the peer id, its multiaddrs and
the swarm's public discriminator; peers of other swarms are ignored. Finding a
peer only tells us where to dial: membership still needs its sealed,
signed announcements.

Anyone on the LAN can answer, so answers are hints (see membership.AddressBook)
and this side bounds the work they cause: at most MAX_RESOLVING answers are
resolved at once (more are dropped; a real peer's record comes again), and a
multiaddr is kept only at an IP of the same answer's A/AAAA records. The
packet's source address would be the better check, but zeroconf hands its
listeners records, not packets (the source stays inside its private packet
handling), and a UDP source is forgeable on a LAN anyway: the bounds on hints
and on the dials they cause are what limit a forger.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from zeroconf import InterfaceChoice, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from p2pai.overlay.addresses import parse_tcp

log = logging.getLogger(__name__)

SERVICE_TYPE = "_p2pai._tcp.local."
MAX_TXT_ADDRS = 8
RESOLVE_TIMEOUT_MS = 3000
MAX_RESOLVING = 8


class MdnsDiscovery:
    def __init__(
        self,
        peer_id: str,
        addrs: list[str],
        discriminator: str,
        interfaces: list[str] | None,
        on_found: Callable[[str, list[str]], None],
    ) -> None:
        self._peer_id = peer_id
        self._addrs = addrs[:MAX_TXT_ADDRS]
        self._discriminator = discriminator
        self._interfaces = interfaces
        self._on_found = on_found
        self._zeroconf: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._resolving = 0
        self.dropped: Counter[str] = Counter()
        """mDNS answers left out: "mdns_busy" (too many at once), "mdns_address" (TXT address not in A/AAAA)."""

    async def start(self) -> None:
        """Start browsing and announce ourselves (in the background)."""
        self._zeroconf = AsyncZeroconf(interfaces=self._interfaces or InterfaceChoice.All)
        self._browser = AsyncServiceBrowser(
            self._zeroconf.zeroconf, [SERVICE_TYPE], handlers=[self._on_state_change]
        )
        self._spawn(self._register())

    async def _register(self) -> None:
        endpoints = [parsed for parsed in map(parse_tcp, self._addrs) if parsed]
        if not endpoints or self._zeroconf is None:
            return
        properties = {"id": self._peer_id, "net": self._discriminator}
        properties.update({f"a{i}": addr for i, addr in enumerate(self._addrs)})
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self._peer_id}.{SERVICE_TYPE}",
            addresses=sorted({ip.packed for ip, _, _ in endpoints}),
            port=endpoints[0][1],
            properties=properties,
        )
        # No name probing (≈1.2 s before peers hear of us): the instance name is our
        # peer id, which no other node can hold.
        await self._zeroconf.async_register_service(info, cooperating_responders=True)

    def _on_state_change(
        self, *, zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change not in (ServiceStateChange.Added, ServiceStateChange.Updated):
            return
        if self._resolving >= MAX_RESOLVING:
            self.dropped["mdns_busy"] += 1
            return
        self._resolving += 1
        self._spawn(self._resolve(service_type, name))

    async def _resolve(self, service_type: str, name: str) -> None:
        try:
            await self._resolve_one(service_type, name)
        finally:
            self._resolving -= 1

    async def _resolve_one(self, service_type: str, name: str) -> None:
        if self._zeroconf is None:
            return
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zeroconf.zeroconf, RESOLVE_TIMEOUT_MS):
            return
        txt = {
            key.decode("utf-8", "replace"): value.decode("utf-8", "replace")
            for key, value in info.properties.items()
            if value is not None
        }
        peer_id = txt.get("id", "")
        if txt.get("net") != self._discriminator or peer_id in ("", self._peer_id):
            return
        answered = {ipaddress.ip_address(address) for address in info.parsed_addresses()}
        addrs = []
        for addr in (txt[f"a{i}"] for i in range(MAX_TXT_ADDRS) if f"a{i}" in txt):
            parsed = parse_tcp(addr)
            if parsed is not None and parsed[0] in answered:
                addrs.append(addr)
            else:
                self.dropped["mdns_address"] += 1
        if addrs:
            self._on_found(peer_id, addrs)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(_logged(coroutine))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zeroconf is not None:
            await self._zeroconf.async_unregister_all_services()
            await self._zeroconf.async_close()


async def _logged(coroutine: Coroutine[Any, Any, None]) -> None:
    """Discovery is best effort (bootstrap still works): log its failures, go on."""
    try:
        await coroutine
    except Exception as exc:  # noqa: BLE001 - zeroconf fails in many ways; none may end the node
        log.warning("mDNS: %r", exc)
