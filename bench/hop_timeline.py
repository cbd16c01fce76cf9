"""Where a forwarded request's time goes, hop by hop, over TLS and in plaintext (root only).

bench_routing.py measures what an entry node adds as a whole. This splits it: two swarms as
there (an entry node and a serving node with the tiny model, node-to-node over TLS and in
plaintext), requests sent one after another through the entry node, and every TCP segment on
loopback between the client, the entry and the serving node's peer endpoint timestamped by the
kernel (an AF_PACKET socket in a process of its own, outgoing copies only). Per request:

- entry in: the client's request reached the entry, the entry's request to the peer left it;
- peer to head: that request left the entry, the answer's head left the serving node;
- head to 1st event: (streams) the head, the first event after it, both as the serving node sent them;
- entry head: the head left the serving node, the client's head left the entry;
- entry 1st event: the first event left the serving node, the first segment to the client after it left the entry;
- 1st event out: the client's request to that segment (for whole answers: to the answer's last segment).

Medians per block; blocks alternate modes. Each block also gives both nodes' CPU per request
and the client's p50 direct and routed (TTFT for streams). The first segment after the head is
taken as the first event: with the tiny model's 4 tokens, every event is a segment of its own.

    flock /tmp/p2pai-heavy.lock .venv/bin/python bench/hop_timeline.py --requests 200 --repeat 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench_routing import LATENCY_MAX_TOKENS, MODES, TINY_MODEL, Node, complete, process_cpu_s, start_pair
from bench_single_node import CpuMeter

SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
PACKET_OUTGOING = 4
HOPS = ("entry_in", "peer_to_head", "head_to_first_event", "entry_head", "entry_first_event", "first_event_out")


def capture(out: Path, ports: set[int]) -> None:
    """Until SIGTERM: "nanoseconds source-port destination-port bytes" of every TCP payload segment
    sent on lo from or to one of ``ports``, written to ``out``."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind(("lo", 0))
    sock.settimeout(0.2)
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    rows = []
    while not stopped:
        try:
            frame, ancillary, _, address = sock.recvmsg(1 << 16, 64)
        except (TimeoutError, InterruptedError):
            continue
        ip = frame[14:]
        if address[2] != PACKET_OUTGOING or len(ip) < 20 or ip[9] != socket.IPPROTO_TCP:
            continue  # on lo every packet also shows up incoming
        tcp = ip[(ip[0] & 0x0F) * 4 : struct.unpack("!H", ip[2:4])[0]]
        source, destination = struct.unpack("!HH", tcp[:4])
        payload = len(tcp) - (tcp[12] >> 4) * 4
        if payload and (source in ports or destination in ports):
            seconds, nanoseconds = struct.unpack("qq", ancillary[0][2][:16])
            rows.append(f"{seconds * 10**9 + nanoseconds} {source} {destination} {payload}\n")
    out.write_text("".join(rows))


def start_capture(out: Path, ports: list[int]) -> subprocess.Popen[bytes]:
    """capture() in a process of its own: its wake-ups must not slow the client's event loop."""
    return subprocess.Popen([sys.executable, __file__, "--capture", str(out), *map(str, ports)])


@dataclass
class Request:
    sent: int  # ns: the client's request left the client
    forwarded: int | None = None
    from_peer: list[int] = field(default_factory=list)
    to_client: list[int] = field(default_factory=list)

    def hops(self, stream: bool) -> dict[str, float]:
        """Microseconds per hop (see the module's docstring)."""
        if self.forwarded is None or not self.from_peer or not self.to_client:
            return {}
        head = self.from_peer[0]
        hops = {"entry_in": self.forwarded - self.sent, "peer_to_head": head - self.forwarded,
                "entry_head": self.to_client[0] - head}
        if not stream:
            hops["first_event_out"] = self.to_client[-1] - self.sent
        elif len(self.from_peer) > 1:
            first = self.from_peer[1]
            out = next((t for t in self.to_client if t >= first), None)
            hops["head_to_first_event"] = first - head
            if out is not None:
                hops |= {"entry_first_event": out - first, "first_event_out": out - self.sent}
        return {name: value / 1000 for name, value in hops.items()}


def requests_in(lines: list[str], entry_port: int, peer_port: int) -> list[Request]:
    requests: list[Request] = []
    for line in lines:
        at, source, destination, _ = (int(v) for v in line.split())
        if destination == entry_port:
            if not requests or requests[-1].forwarded is not None:
                requests.append(Request(at))  # a request in several segments stays one
        elif not requests:
            continue
        elif destination == peer_port:
            requests[-1].forwarded = requests[-1].forwarded or at
        elif source == peer_port:
            requests[-1].from_peer.append(at)
        elif source == entry_port:
            requests[-1].to_client.append(at)
    return requests


def port_of(node: Node) -> int:
    return int(node.url.rsplit(":", 1)[1])


def peer_port(node: Node) -> int:
    """The serving node's peer endpoint: the one port it listens on besides its client API and libp2p."""
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in listening.splitlines() if f"pid={node.pid}," in line}
    (port,) = ports - {port_of(node), node.p2p_port}
    return port


async def timed(session: aiohttp.ClientSession, node: Node, stream: bool) -> float:
    """Milliseconds to the first token (``stream``) or to the whole answer."""
    answer = await complete(session, node.url, TINY_MODEL, LATENCY_MAX_TOKENS, stream)
    seconds = answer.ttft_s if stream else answer.seconds
    assert seconds is not None, "a stream without text"
    return seconds * 1000


async def block(session: aiohttp.ClientSession, entry: Node, server: Node, peer: int, stream: bool, requests: int,
                workdir: Path) -> dict[str, float]:
    out = workdir / "segments.txt"
    capturing = start_capture(out, [port_of(entry), peer])
    await asyncio.sleep(0.5)
    cpu = (process_cpu_s(entry.pid), process_cpu_s(server.pid))
    routed = [await timed(session, entry, stream) for _ in range(requests)]
    result = {"entry_cpu_us": (process_cpu_s(entry.pid) - cpu[0]) / requests * 1e6,
              "server_cpu_us": (process_cpu_s(server.pid) - cpu[1]) / requests * 1e6}
    await asyncio.sleep(0.2)
    capturing.send_signal(signal.SIGTERM)
    capturing.wait(10)
    hops = [r.hops(stream) for r in requests_in(out.read_text().splitlines(), port_of(entry), peer)]
    for name in HOPS:
        values = [h[name] for h in hops if name in h]
        if values:
            result[name] = statistics.median(values)
    result["direct_p50_ms"] = statistics.median([await timed(session, server, stream) for _ in range(requests)])
    result["routed_p50_ms"] = statistics.median(routed)
    result["added_p50_ms"] = result["routed_p50_ms"] - result["direct_p50_ms"]
    return result


async def run(args: argparse.Namespace, workdir: Path, started: list[Node]) -> None:
    from p2pai.token import new_token
    from tiny_gguf import write_tiny_gguf

    (workdir / "no-models").mkdir()
    tiny = write_tiny_gguf(workdir / f"{TINY_MODEL}.gguf", seed=1)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        swarms = {mode: await start_pair(session, workdir, new_token(), mode, tiny, started) for mode in MODES}
        peers = {mode: peer_port(server) for mode, (_, server) in swarms.items()}
        meter = CpuMeter([os.getpid(), *(node.pid for pair in swarms.values() for node in pair)])
        for entry, _ in swarms.values():
            for stream in (False, True):
                for _ in range(20):  # warm-up: connections, caches
                    await complete(session, entry.url, TINY_MODEL, LATENCY_MAX_TOKENS, stream)
        results: dict[tuple[str, bool], list[dict[str, float]]] = {(m, s): [] for m in MODES for s in (True, False)}
        for i in range(args.repeat):
            for stream in (True, False):
                for mode in MODES if i % 2 == 0 else tuple(reversed(MODES)):
                    await asyncio.to_thread(meter.wait_quiet)
                    since = meter.mark()
                    result = await block(session, *swarms[mode], peers[mode], stream, args.requests, workdir)
                    result["others_cores"] = meter.others_cores(since)
                    results[mode, stream].append(result)
                    print(f"  {mode} {'stream' if stream else 'whole'}: "
                          + ", ".join(f"{k} {v:.3g}" for k, v in result.items()), flush=True)
    print("\n| medians of blocks | " + " | ".join(f"{m} {'stream' if s else 'whole'}" for m, s in results) + " |")
    print("| --- |" + " --- |" * len(results))
    for name in (*HOPS, "entry_cpu_us", "server_cpu_us", "direct_p50_ms", "routed_p50_ms", "added_p50_ms",
                 "others_cores"):
        cells = [statistics.median(b[name] for b in blocks) if all(name in b for b in blocks) else None
                 for blocks in results.values()]
        print(f"| {name} | " + " | ".join("" if c is None else f"{c:.3g}" for c in cells) + " |")


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--capture":
        capture(Path(sys.argv[2]), {int(port) for port in sys.argv[3:]})
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="routed requests per block (and as many direct)")
    parser.add_argument("--repeat", type=int, default=4, help="blocks per mode and kind")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("capturing packets needs root", file=sys.stderr)
        return 2
    started: list[Node] = []
    with tempfile.TemporaryDirectory(prefix="p2pai-bench-hops-") as tmp:
        try:
            asyncio.run(run(args, Path(tmp), started))
        finally:
            for node in reversed(started):  # stopped by their own PIDs
                node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
