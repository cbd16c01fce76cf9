"""Which announced addresses this node connects to: announcements are data from members, not orders.

A member announces where its peer endpoint (a worker: its RPC relay) listens. Used
as given, that lets one member point every node at any address: at a node's own
client API (a forwarding loop), at loopback services, at a third party. So this
node keeps only the hosts equal to the IP the member's libp2p connection comes
from, never one of its own listening sockets, and drops anything that is not an
IP literal. A member whose endpoint is elsewhere (or malformed) is reached
through the tunnel over libp2p instead.

Proving ownership of other addresses is left out: the connection's address is
the one a member has already proven to answer at (libp2p's Noise handshake binds
it to the peer id), and it is the right one on a LAN, behind NAT with a
forwarded port and in a container with published ports. Loopback and
link-local hosts follow from the rule: they are kept only for a member whose
connection comes from loopback or link-local itself, i.e. from this machine
or this link. A member on this machine may announce any loopback address:
all of 127.0.0.0/8 is this machine, and a connection between two loopback
addresses comes from 127.0.0.1 whatever the dialler listens on.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable

from ..overlay.addresses import interface_ips
from .payload import NodePayload, PeerEndpoint
from .view import WorkerOffer

_Ip = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: object) -> _Ip | None:
    """An IP literal (an IPv4-mapped IPv6 address as IPv4), or None; no scoped IPv6 (it has no URL form here)."""
    if not isinstance(text, str) or "%" in text:
        return None
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class OwnAddresses:
    """This node's listening sockets (client API, peer endpoint, libp2p): no announcement may point
    it at one of them. A wildcard bind (0.0.0.0, ::) stands for every local IP with its port."""

    def __init__(self, binds: Iterable[tuple[str, int]] = ()) -> None:
        self._binds = [(ip, port) for host, port in binds if (ip := parse_ip(host)) is not None]
        wildcards = any(ip.is_unspecified for ip, _ in self._binds)
        self._local: frozenset[_Ip] = frozenset(interface_ips(4) + interface_ips(6)) if wildcards else frozenset()

    def __contains__(self, address: tuple[_Ip, int]) -> bool:
        ip, port = address
        for bound, bound_port in self._binds:
            if bound_port != port:
                continue
            if bound == ip:
                return True
            # "::" also takes IPv4 on a dual-stack socket; 0.0.0.0 only IPv4.
            covers = bound.version == 6 or ip.version == 4
            if bound.is_unspecified and covers and (ip.is_loopback or ip in self._local):
                return True
        return False


def usable_hosts(endpoint: PeerEndpoint | None, remote: str | None, own: OwnAddresses) -> list[str]:
    """The announced hosts of ``endpoint`` this node may connect to (see the module docstring)."""
    source = parse_ip(remote)
    if endpoint is None or source is None or not endpoint.port:
        return []
    return [str(ip) for ip in map(parse_ip, endpoint.hosts)
            if ip is not None and (ip == source or (ip.is_loopback and source.is_loopback))
            and (ip, endpoint.port) not in own]


def vetted(parsed: tuple[NodePayload, WorkerOffer | None], remote: str | None, own: OwnAddresses,
           rejected: Counter[str]) -> tuple[NodePayload, WorkerOffer | None]:
    """A member's parsed payload with only the usable hosts left in its endpoints (dropped ones counted)."""
    payload, worker = parsed
    if payload.endpoint is not None:
        payload = payload.model_copy(update={"endpoint": _keep_usable(payload.endpoint, remote, own, rejected)})
    if worker is not None:
        worker = worker.model_copy(update={"rpc": _keep_usable(worker.rpc, remote, own, rejected)})
    return payload, worker


def _keep_usable(endpoint: PeerEndpoint, remote: str | None, own: OwnAddresses, rejected: Counter[str]) -> PeerEndpoint:
    hosts = usable_hosts(endpoint, remote, own)
    if len(hosts) < len(endpoint.hosts):
        rejected["endpoint_hosts"] += len(endpoint.hosts) - len(hosts)
    return endpoint.model_copy(update={"hosts": hosts})
