"""Soak benchmark: slow-reading streams pile up on one node; its memory stays bounded and other
clients are still answered.

One real `p2pai start` process on 127.0.0.1 (`--threads 1 --preload`), serving the tiny test
models of tests/tiny_gguf.py: `tiny` (4 slots, `max_queue: 256`, so every slow stream is taken)
and `tiny-b` (2 slots).

1. Baseline: warm-up requests on both models, then the RSS (VmRSS) of the node process and of
   each model process, and the machine's TCP socket buffers, settled.
2. Soak: `--clients` streamed chat completions on `tiny` (`--n` choices of `--tokens` tokens,
   20 top logprobs each: about 1.5 KB per token) from clients that read slowly: a 4 KiB socket
   receive buffer, then either a few bytes a second ("trickle") or nothing at all ("stall")
   until `--duration` seconds have passed. Meanwhile two probes send requests one after another
   and time them: non-streamed on `tiny-b` (another model) and streamed on `tiny` (the same
   model, queued behind the slow streams). Memory is sampled every SAMPLE_S.
3. End: half the slow clients read the rest of their stream at full speed, and it must be whole
   (`[DONE]`, `finish_reason: "length"`, usage = max_tokens x n); the other half hang up. After
   `--settle` seconds, the memory again. `--rounds` soaks in a row on the same node show a leak.

It prints the memory (baseline, then peak and end of each round), what the probes got and how
fast, and the slow streams' outcomes; it exits 1 if a slow stream was refused or broken, or a
probe failed. `tests/test_soak.py` runs a shortened version of the same code.

Run `python bench/soak.py --help` for the options; see bench/README.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_single_node import CpuMeter, machine  # noqa: E402
from bench_swarm import HOST, Node, get_json, rss_bytes, scan_logs, wait_ready  # noqa: E402
from chaos import CHAT, COMPLETIONS, Spec, StreamJudge, Verdict, exchange, write_models  # noqa: E402

MAX_QUEUE = 256
RCVBUF = 4096
TOP_LOGPROBS = 20
"""The slow streams ask for them: about 1.5 KB per token, more than the kernel's socket buffers hold."""
TRICKLE_BYTES = 16
"""A trickling client reads this many bytes each second."""
SAMPLE_S = 0.5
PROBE_PAUSE_S = 0.2
DEADLINE_S = 120.0
"""Any request (slow stream drain, probe) not ended after this long is hung."""
BASELINE_S = 3.0
PROMPT = "the people of the water"
DEFAULT_OUTPUT = BENCH / "results" / "soak.json"


@dataclass(frozen=True)
class Config:
    clients: int = 200
    tokens: int = 200
    """max_tokens of each slow stream."""
    n: int = 1
    """Choices of each slow stream."""
    duration_s: float = 50.0
    """Below api/sse.SEND_TIMEOUT (60 s): a stream that reads nothing for longer is cut by the node."""
    settle_s: float = 10.0
    rounds: int = 1
    """Soaks one after another on the same node: a leak grows from round to round."""


# Slow readers.


@dataclass
class Slow:
    index: int
    mode: str
    """trickle or stall."""
    drain: bool
    """At the end: read the rest at full speed (True) or hang up (False)."""
    outcome: str = "pending"
    """ok, hung_up, refused (not 200), or what went wrong."""
    trickled: int = 0
    """Bytes read while slow."""


def request_bytes(port: int, spec: Spec) -> bytes:
    data = json.dumps(spec.body()).encode()
    head = (f"POST {spec.path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n")
    return head.encode() + data


def dechunk(body: bytes) -> bytes:
    """A chunked transfer-encoded body, decoded; ValueError if it is not whole."""
    out, at = bytearray(), 0
    while True:
        end = body.index(b"\r\n", at)
        size = int(body[at:end].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        start = end + 2
        if len(body) < start + size + 2:
            raise ValueError("the chunked body ends mid-chunk")
        out += body[start:start + size]
        at = start + size + 2


def judge_http_stream(raw: bytes, spec: Spec) -> str:
    """'ok' if ``raw`` (a whole HTTP response) is a 200 stream that is whole, else why not."""
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        status_line = head.split(b"\r\n")[0]
        return f"status line {status_line!r}"
    try:
        events = dechunk(body) if b"transfer-encoding: chunked" in head.lower() else body
    except ValueError as exc:
        return f"broken body: {exc}"
    judge = StreamJudge(spec)
    try:
        for line in events.split(b"\n"):
            judge.feed(line)
        judge.verdict()
    except Verdict as verdict:
        return f"{verdict.kind}: {verdict}"
    return "ok"


async def recv_some(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int, timeout: float) -> bytes:
    return await asyncio.wait_for(loop.sock_recv(sock, size), timeout)


async def slow_stream(slow: Slow, port: int, spec: Spec, until: float) -> None:
    """Send the request and read slowly until ``until`` (or not at all); then drain the rest or hang up."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.setblocking(False)
    received = bytearray()
    try:
        await loop.sock_connect(sock, (HOST, port))
        await loop.sock_sendall(sock, request_bytes(port, spec))
        while (left := until - time.monotonic()) > 0:
            if slow.mode == "stall":
                await asyncio.sleep(left)
                break
            try:
                piece = await recv_some(loop, sock, TRICKLE_BYTES, left)
            except asyncio.TimeoutError:
                break
            if not piece:
                break  # the node ended the answer; judged below
            received += piece
            slow.trickled += len(piece)
            await asyncio.sleep(min(1.0, max(0.0, until - time.monotonic())))
        if not slow.drain:
            refused = len(received) >= 12 and not received.startswith(b"HTTP/1.1 200")
            slow.outcome = "refused" if refused else "hung_up"
            return
        deadline = time.monotonic() + DEADLINE_S
        while piece := await recv_some(loop, sock, 1 << 16, max(0.0, deadline - time.monotonic())):
            received += piece
        slow.outcome = judge_http_stream(bytes(received), spec)
    except asyncio.TimeoutError:
        slow.outcome = "hung"
    except OSError as exc:
        slow.outcome = f"connection failed: {exc!r}"
    finally:
        sock.close()


# Probes and memory.


@dataclass
class Probe:
    name: str
    spec: Spec
    seconds: list[float] = field(default_factory=list)
    """Latency of each answered request, in order."""
    failures: list[str] = field(default_factory=list)

    async def run(self, session: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> None:
        """Requests one after another until ``stop``; each must be whole."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with asyncio.timeout(DEADLINE_S):
                    await exchange(session, url, self.spec, {})
                self.seconds.append(time.monotonic() - started)
            except Verdict as verdict:
                self.failures.append(f"{verdict.kind} {verdict.code}: {verdict}")
            except TimeoutError:
                self.failures.append(f"hung for {DEADLINE_S:.0f} s")
            except aiohttp.ClientError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(PROBE_PAUSE_S)

    def summary(self) -> dict[str, Any]:
        values = sorted(self.seconds)

        def at(q: float) -> float | None:
            return values[min(len(values) - 1, int(q * len(values)))] if values else None

        return {"answered": len(values), "failed": len(self.failures), "p50_s": at(0.5), "p99_s": at(0.99),
                "max_s": values[-1] if values else None, "failures": self.failures[:10]}


TCP_BUFFERS = "kernel TCP buffers"


def tcp_buffer_bytes() -> int | None:
    """Memory of the whole machine's TCP socket buffers (/proc/net/sockstat counts pages)."""
    try:
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        pass
    return None


class Memory:
    """VmRSS of the node and of its model processes, and the kernel's TCP buffers, every SAMPLE_S."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.names = [*pids, TCP_BUFFERS]
        self.samples: list[tuple[float, dict[str, int | None]]] = []

    def sample(self) -> dict[str, int | None]:
        values = {name: rss_bytes(pid) for name, pid in self.pids.items()}
        values[TCP_BUFFERS] = tcp_buffer_bytes()
        self.samples.append((time.monotonic(), values))
        return values

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sample()
            await asyncio.sleep(SAMPLE_S)

    def peak(self, since: float) -> dict[str, int]:
        return {name: max(v[name] or 0 for t, v in self.samples if t >= since) for name in self.names}


async def model_pids(session: aiohttp.ClientSession, node: Node) -> dict[str, int]:
    system = await get_json(session, node.url + "/system") or {}
    return {model["id"]: model["pid"] for model in system.get("loaded_models", ())}


async def queue_depth(session: aiohttp.ClientSession, node: Node, stop: asyncio.Event, seen: list[int]) -> None:
    """The most requests `tiny` had at once (in flight + queued), as the node reports it."""
    while not stop.is_set():
        system = await get_json(session, node.url + "/system") or {}
        for model in system.get("loaded_models", ()):
            if model["id"] == "tiny":
                seen.append(model["in_flight"] + model["queued"])
        await asyncio.sleep(SAMPLE_S)


@dataclass
class Round:
    peak: dict[str, int]
    """Bytes per process (and kernel TCP buffers) at their highest during the soak..."""
    end: dict[str, int]
    """...and after the slow clients left and `settle_s` passed."""
    slow: dict[str, int]
    """Slow streams by outcome."""
    trickled_bytes: int
    most_at_once: int
    probes: dict[str, dict[str, Any]]
    others_cores: float


@dataclass
class Report:
    config: Config
    baseline: dict[str, int]
    rounds: list[Round]
    log_problems: dict[str, list[str]]

    @property
    def failed(self) -> bool:
        return any(set(r.slow) - {"ok", "hung_up"} or any(p["failed"] or not p["answered"] for p in r.probes.values())
                   for r in self.rounds)

    def growth(self, name: str, which: str = "peak") -> list[int]:
        """Bytes above the baseline of ``name`` at each round's peak (or end)."""
        return [getattr(r, which)[name] - self.baseline[name] for r in self.rounds]

    def render(self) -> str:
        c, mb = self.config, 1e6
        lines = [f"{c.clients} slow streams (chat, {c.n} x {c.tokens} tokens with {TOP_LOGPROBS} top logprobs each) "
                 f"on one node for {c.duration_s:.0f} s, {c.rounds} round(s):"]
        for name, base in self.baseline.items():
            label = name if name == TCP_BUFFERS else f"RSS {name}"
            rounds = "; ".join(f"peak {r.peak[name] / mb:.1f} (+{(r.peak[name] - base) / mb:.1f}), "
                               f"end {r.end[name] / mb:.1f} (+{(r.end[name] - base) / mb:.1f})" for r in self.rounds)
            lines.append(f"  {label:18s} MB: baseline {base / mb:.1f}; {rounds}")
        for i, r in enumerate(self.rounds, 1):
            lines.append(f"  round {i}: at most {r.most_at_once} requests on `tiny` at once; slow streams: "
                         + ", ".join(f"{n} {k}" for k, n in sorted(r.slow.items()))
                         + f"; {r.trickled_bytes} bytes trickled; others used {r.others_cores:.2f} cores")
            for name, p in r.probes.items():
                timing = "none answered"
                if p["answered"]:
                    timing = ", ".join(f"{q} {p[q + '_s'] * 1000:.0f} ms" for q in ("p50", "p99", "max"))
                lines.append(f"    probe {name}: {p['answered']} answered ({timing}), {p['failed']} failed")
        return "\n".join(lines)


async def soak_round(session: aiohttp.ClientSession, node: Node, memory: Memory, config: Config) -> Round:
    """One soak: slow streams, probes and samples until the slow clients are done; then settle."""
    port = int(node.url.rsplit(":", 1)[1])
    probes = [
        Probe("other model (tiny-b, 16 tokens)", Spec(0, COMPLETIONS, "tiny-b", False, False, 16, PROMPT)),
        Probe("same model (tiny, streamed, 16 tokens)", Spec(0, COMPLETIONS, "tiny", True, True, 16, PROMPT)),
    ]
    meter = CpuMeter([os.getpid()])
    since = meter.mark()
    stop = asyncio.Event()
    started = time.monotonic()
    depth: list[int] = []
    background = [asyncio.create_task(memory.run(stop)), asyncio.create_task(queue_depth(session, node, stop, depth)),
                  *(asyncio.create_task(probe.run(session, node.url, stop)) for probe in probes)]
    slows = [Slow(i, "trickle" if i % 2 else "stall", drain=i % 4 < 2) for i in range(config.clients)]
    spec = Spec(0, CHAT, "tiny", True, True, config.tokens, PROMPT, top_logprobs=TOP_LOGPROBS, n=config.n)
    await asyncio.gather(*(slow_stream(slow, port, spec, started + config.duration_s) for slow in slows))
    stop.set()
    await asyncio.gather(*background)
    others = meter.others_cores(since)
    await asyncio.sleep(config.settle_s)
    end = {name: value or 0 for name, value in memory.sample().items()}
    return Round(memory.peak(started), end, dict(Counter(s.outcome for s in slows)), sum(s.trickled for s in slows),
                 max(depth, default=0), {p.name: p.summary() for p in probes}, others)


async def run(config: Config, workdir: Path) -> Report:
    """Start the node, soak it `rounds` times, and report; the node is stopped at the end."""
    from p2pai.token import new_token

    models = workdir / "models"
    write_models(models, max_queue=MAX_QUEUE)
    node = Node("soak", workdir, new_token(), models, mdns=False,
                extra=("--threads", "1", "--preload", "--no-default-model"))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        try:
            node.start()
            await wait_ready(session, node)
            for model in ("tiny", "tiny-b"):  # warm-up, every kind of request once
                await exchange(session, node.url, Spec(0, COMPLETIONS, model, True, True, 16, PROMPT), {})
                await exchange(session, node.url, Spec(0, CHAT, model, False, False, 16, PROMPT, TOP_LOGPROBS), {})
            memory = Memory({"node": node.pid, **await model_pids(session, node)})
            for _ in range(int(BASELINE_S / SAMPLE_S)):
                baseline = memory.sample()
                await asyncio.sleep(SAMPLE_S)
            rounds = [await soak_round(session, node, memory, config) for _ in range(config.rounds)]
        finally:
            node.stop()
    return Report(config, {name: value or 0 for name, value in baseline.items()}, rounds, scan_logs(workdir))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = Config()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=defaults.clients, help="slow streams (%(default)s)")
    parser.add_argument("--tokens", type=int, default=defaults.tokens, help="max_tokens of each (%(default)s)")
    parser.add_argument("--n", type=int, default=defaults.n, help="choices of each (%(default)s)")
    parser.add_argument("--duration", type=float, default=defaults.duration_s,
                        help="seconds the slow clients read slowly (%(default)s)")
    parser.add_argument("--settle", type=float, default=defaults.settle_s,
                        help="seconds after a round before its end RSS (%(default)s)")
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="soaks in a row (%(default)s)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = Config(clients=args.clients, tokens=args.tokens, n=args.n, duration_s=args.duration,
                    settle_s=args.settle, rounds=args.rounds)
    started = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="p2pai-bench-soak-") as tmp:
        report = asyncio.run(run(config, Path(tmp)))
    text = report.render()
    print(text)
    for name, lines in report.log_problems.items():
        for line in lines[:5]:
            print(f"  {name} logged: {line}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "date": started.isoformat(timespec="seconds"), "machine": machine(), "config": asdict(config),
        "summary": text, "baseline": report.baseline, "rounds": [asdict(r) for r in report.rounds],
        "log_problems": report.log_problems,
    }, indent=1) + "\n")
    print(f"results written to {args.output}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
