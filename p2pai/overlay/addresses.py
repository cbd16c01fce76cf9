"""Multiaddr strings: which of ours to advertise, which of theirs to dial.

Plain string handling, so the asyncio side never needs to import libp2p.
Only TCP over literal IPv4/IPv6 addresses is used: no DNS, QUIC or relays.
"""

from __future__ import annotations

import ipaddress

_Ip = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_tcp(addr: str) -> tuple[_Ip, int, str | None] | None:
    """Split ``/ip4|ip6/<ip>/tcp/<port>[/p2p/<id>]`` into (ip, port, peer id), or None."""
    parts = addr.split("/")
    if len(parts) not in (5, 7) or parts[0] != "" or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
        return None
    if len(parts) == 7 and parts[5] != "p2p":
        return None
    try:
        ip = ipaddress.ip_address(parts[2])
        port = int(parts[4])
    except ValueError:
        return None
    if (ip.version == 4) != (parts[1] == "ip4") or not 0 < port < 65536:
        return None
    return ip, port, parts[6] if len(parts) == 7 else None


def ips(addrs: list[str] | tuple[str, ...]) -> list[str]:
    """The distinct IPs of TCP multiaddrs, in order (e.g. to offer other services on them)."""
    found: list[str] = []
    for addr in addrs:
        parsed = parse_tcp(addr)
        if parsed is not None and str(parsed[0]) not in found:
            found.append(str(parsed[0]))
    return found


def dialable(addrs: list[str], peer_id: str) -> list[str]:
    """The addresses of ``peer_id`` worth dialing, as ``/ipX/<ip>/tcp/<port>``."""
    result = []
    for addr in addrs:
        parsed = parse_tcp(addr)
        if parsed is None:
            continue
        ip, port, claimed = parsed
        if claimed not in (None, peer_id) or ip.is_unspecified or ip.is_multicast:
            continue
        result.append(f"/ip{ip.version}/{ip}/tcp/{port}")
    return result


def advertised(listen_addrs: list[str], peer_id: str) -> list[str]:
    """Turn the addresses we listen on into ones peers can dial, with ``/p2p/<id>``.

    A wildcard listen address (0.0.0.0, ::) stands for every interface; loopback
    is only advertised when nothing else is, since a remote peer dialing
    127.0.0.1 would reach itself.
    """
    routable: list[str] = []
    loopback: list[str] = []
    for addr in listen_addrs:
        parsed = parse_tcp(addr)
        if parsed is None:
            continue
        ip, port, _ = parsed
        for concrete in interface_ips(ip.version) if ip.is_unspecified else [ip]:
            text = f"/ip{concrete.version}/{concrete}/tcp/{port}/p2p/{peer_id}"
            (loopback if concrete.is_loopback else routable).append(text)
    return routable or loopback


def interface_ips(version: int) -> list[_Ip]:
    import ifaddr  # 35 ms, only needed when listening on a wildcard address

    ips: list[_Ip] = []
    for adapter in ifaddr.get_adapters():
        for entry in adapter.ips:
            if version == 4 and entry.is_IPv4:
                ips.append(ipaddress.IPv4Address(entry.ip))
            elif version == 6 and entry.is_IPv6:
                ip6 = ipaddress.IPv6Address(entry.ip[0])
                if not ip6.is_link_local:  # would need a scope id to dial
                    ips.append(ip6)
    return ips
