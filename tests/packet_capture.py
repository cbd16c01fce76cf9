"""Every IPv4 TCP packet on the loopback interface, read with an AF_PACKET socket (root only):
what someone on the path between two nodes would see."""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
from collections import defaultdict

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
ETHERNET_HEADER = 14
STOP_CHECK_S = 0.05


def available() -> str | None:
    """None if this process can capture on lo, else why not."""
    if not hasattr(socket, "AF_PACKET"):
        return "no AF_PACKET sockets on this platform"
    if os.geteuid() != 0:
        return "capturing packets needs root"
    return None


class LoopbackCapture:
    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE (root): no drops under bursts
        self._sock.bind(("lo", 0))
        self._segments: dict[tuple[str, int, str, int], dict[int, bytes]] = defaultdict(dict)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="capture", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._sock], [], [], STOP_CHECK_S)[0]:
                continue
            while True:
                try:
                    frame = self._sock.recv(1 << 17, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                self._keep(frame)

    def _keep(self, frame: bytes) -> None:
        ip = frame[ETHERNET_HEADER:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_TCP:
            return
        source, destination = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        tcp = ip[(ip[0] & 0x0F) * 4 : struct.unpack("!H", ip[2:4])[0]]
        sport, dport, seq = struct.unpack("!HHI", tcp[:8])
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if payload:  # each packet shows up twice on lo (sent and received): keyed by its sequence number
            self._segments[(source, sport, destination, dport)][seq] = payload

    def stop(self) -> Captured:
        self._stop.set()
        self._thread.join(5)
        drops = struct.unpack("II", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
        self._sock.close()
        return Captured({flow: b"".join(seg for _, seg in sorted(segments.items()))
                         for flow, segments in self._segments.items()}, drops)


class Captured:
    """Each TCP flow (source, port, destination, port), its payload reassembled in sequence order."""

    def __init__(self, flows: dict[tuple[str, int, str, int], bytes], drops: int) -> None:
        self.flows = flows
        self.drops = drops

    def flows_with(self, needle: bytes, except_ports: frozenset[int] = frozenset()
                   ) -> list[tuple[str, int, str, int]]:
        """The flows that carry ``needle``, but for those from or to one of ``except_ports``."""
        return [flow for flow, data in self.flows.items()
                if needle in data and flow[1] not in except_ports and flow[3] not in except_ports]

    def bytes_to(self, host: str, port: int) -> int:
        return sum(len(data) for (_, _, dst, dport), data in self.flows.items() if (dst, dport) == (host, port))
