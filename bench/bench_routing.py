"""Routing benchmark: what an entry node costs, and how throughput scales behind it.

One invocation starts small swarms of real `p2pai start` processes on loopback
(an entry node with no model, `--no-default-model`, plus serving nodes) and measures:

1. added latency: the same request sent straight to the serving node and through
   the entry node, interleaved; p50 and p99 of non-streamed requests and of time
   to first token (streamed), on the tiny test model (tests/tiny_gguf.py);
2. CPU per forwarded stream chunk: long streams through the entry node, the entry
   process's CPU time over the SSE events it forwarded, next to the serving node's;
3. scaling: aggregate throughput of 1, 2 and 4 serving nodes behind the entry node
   under 2 concurrent streaming clients per serving node, the serving nodes running
   the benchmark's slow backend (bench/slow_backend.py: a fixed sleep per token, no
   compute, so 2 cores can show N nodes' worth of throughput).

1 and 2 run on two swarms side by side, their blocks alternating: node-to-node traffic over TLS
(the default) and in plaintext (P2PAI_PLAINTEXT_PEERS=1, the measurement-only switch), so that
what TLS costs is measured against a baseline of the same run. 3 runs over TLS.

Run `python bench/bench_routing.py --help` for the options; see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "tests"))

from bench_single_node import HOST, CpuMeter, ServerProcess, free_port, machine  # noqa: E402

PROMPT = "the people of the water"
LATENCY_MAX_TOKENS = 4
CHUNK_MAX_TOKENS = 2000
TINY_CONTEXT = 2048
SLOW_MODEL = "slow"
TINY_MODEL = "tiny"

TARGETS = {
    "added_p50_ms": 1.0,
    "added_p99_ms": 5.0,
    "entry_cpu_per_chunk_ms": 0.05,
    "scaling_efficiency_4": 0.9,
}
"""Maximum added latency (both non-streamed and TTFT), maximum entry CPU per chunk,
minimum scaling efficiency at 4 nodes (issue #4)."""

READY_TIMEOUT_S = 60.0
SWARM_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 120.0
IDLE_WINDOW_S = 5.0
DEFAULT_OUTPUT = BENCH / "results" / "routing.json"
MODES = ("plaintext", "tls")
PLAINTEXT = {"P2PAI_PLAINTEXT_PEERS": "1"}  # p2pai.routing.peer_tls.PLAINTEXT_ENV


# Processes.


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process used so far."""
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


class Node(ServerProcess):
    """A `p2pai start` process on loopback only, run through bench/slow_node.py.

    The launcher passes the arguments after `--` to p2pai's CLI; with `--token-ms`
    it serves every model with the slow backend, with `--profile` it runs under cProfile.
    """

    def __init__(self, name: str, workdir: Path, token: str, *, launcher: list[str], p2pai: list[str],
                 bootstrap: str | None = None, env: dict[str, str] | None = None) -> None:
        port, self.p2p_port = free_port(), free_port()
        data_dir = workdir / name
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, str(BENCH / "slow_node.py"), *launcher, "--",
            "start", "--token", token, "--name", name,
            "--listen", f"{HOST}:{port}", "--peer-listen", f"{HOST}:0",
            "--p2p-listen", f"/ip4/{HOST}/tcp/{self.p2p_port}", "--no-mdns",
            "--data-dir", str(data_dir), "--models-dir", str(workdir / "no-models"),
            *(["--bootstrap", bootstrap] if bootstrap else []), *p2pai,
        ]
        super().__init__(name, argv, port, "/readyz", workdir / f"{name}.log")
        self.peer_id = ""
        self.env = env or {}

    def start(self) -> None:
        env = {**os.environ, **self.env,
               "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=REPO, env=env)

    async def ready(self, session: aiohttp.ClientSession) -> None:
        await self.wait_ready(session)
        async with session.get(self.url + "/api/p2p") as resp:
            self.peer_id = (await resp.json())["self"]["id"]

    @property
    def bootstrap_addr(self) -> str:
        return f"/ip4/{HOST}/tcp/{self.p2p_port}/p2p/{self.peer_id}"

    def cpu_s(self) -> float:
        return process_cpu_s(self.pid)


async def wait_for_nodes(session: aiohttp.ClientSession, entry: Node, model: str, count: int) -> None:
    """Until the entry node lists `model` as loaded on `count` nodes (bounded in time)."""
    deadline = time.monotonic() + SWARM_TIMEOUT_S
    seen: list[str] = []
    while time.monotonic() < deadline:
        async with session.get(entry.url + "/v1/models") as resp:
            cards = {card["id"]: card for card in (await resp.json())["data"]}
        seen = cards.get(model, {}).get("loaded_on", [])
        if len(seen) == count:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{entry.name} sees {model!r} loaded on {len(seen)} nodes, not {count}:\n{entry.log_tail()}")


# Requests.


@dataclass
class Answer:
    seconds: float
    """Request sent to the whole answer read."""
    ttft_s: float | None
    """Request sent to the first chunk carrying text (streams)."""
    events: int
    """SSE `data:` events received (streams), [DONE] included."""
    completion_tokens: int
    served_by: str
    entry: str | None
    upstream_ms: float | None
    started: float
    """time.perf_counter() when the request was sent."""


async def complete(session: aiohttp.ClientSession, url: str, model: str, max_tokens: int, stream: bool) -> Answer:
    payload: dict[str, Any] = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    if stream:
        payload.update(stream=True, stream_options={"include_usage": True})
    started = time.perf_counter()
    first: float | None = None
    events = tokens = 0
    async with session.post(url + "/v1/completions", json=payload) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url} answered {resp.status}: {(await resp.text())[:500]}")
        if not stream:
            tokens = (await resp.json())["usage"]["completion_tokens"]
        else:
            async for raw_line in resp.content:
                if not raw_line.startswith(b"data:"):
                    continue
                events += 1
                data = raw_line[5:].strip()
                if data == b"[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    raise RuntimeError(f"{url} stream failed: {event['error']}")
                if first is None and any(c.get("text") for c in event.get("choices") or ()):
                    first = time.perf_counter()
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
        upstream = resp.headers.get("X-P2PAI-Upstream-Ms")
        return Answer(
            seconds=time.perf_counter() - started,
            ttft_s=None if first is None else first - started,
            events=events,
            completion_tokens=tokens,
            served_by=resp.headers.get("X-P2PAI-Served-By", ""),
            entry=resp.headers.get("X-P2PAI-Entry"),
            upstream_ms=float(upstream) if upstream else None,
            started=started,
        )


def quantile(values: list[float], q: float) -> float:
    """Inclusive quantile, q in (0, 1): the p50/p99 of a block of requests."""
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


# 1. Added latency.


async def latency_block(session: aiohttp.ClientSession, entry: Node, server: Node, meter: CpuMeter,
                        requests: int, stream: bool) -> dict[str, Any]:
    """`requests` pairs, direct and routed alternating which goes first; sequential."""
    direct: list[float] = []
    routed: list[float] = []
    upstream: list[float] = []
    since = meter.mark()
    for i in range(requests):
        order = ((server, direct), (entry, routed)) if i % 2 == 0 else ((entry, routed), (server, direct))
        for node, into in order:
            answer = await complete(session, node.url, TINY_MODEL, LATENCY_MAX_TOKENS, stream)
            if answer.served_by != server.peer_id or answer.completion_tokens != LATENCY_MAX_TOKENS:
                raise RuntimeError(f"unexpected answer via {node.name}: {answer}")
            value = answer.ttft_s if stream else answer.seconds
            assert value is not None, "a stream without text"
            into.append(value * 1000)
            if node is entry:
                assert answer.entry == entry.peer_id and answer.upstream_ms is not None
                upstream.append(answer.upstream_ms)
    block: dict[str, Any] = {"others_cores": meter.others_cores(since), "wall_s": meter.mark()[0] - since[0]}
    for q in (0.5, 0.99):
        name = f"p{round(q * 100)}"
        block[f"direct_{name}_ms"] = quantile(direct, q)
        block[f"routed_{name}_ms"] = quantile(routed, q)
        block[f"added_{name}_ms"] = block[f"routed_{name}_ms"] - block[f"direct_{name}_ms"]
    block["paired_added_median_ms"] = statistics.median(r - d for r, d in zip(routed, direct, strict=True))
    block["upstream_header_median_ms"] = statistics.median(upstream)
    return block


async def bench_latency(session: aiohttp.ClientSession, swarms: dict[str, tuple[Node, Node]], meter: CpuMeter,
                        args: argparse.Namespace) -> dict[str, Any]:
    """Per mode (TLS, plaintext) and kind, `--repeat` blocks; the modes' blocks alternate."""
    result: dict[str, Any] = {mode: {} for mode in swarms}
    for stream in (False, True):
        kind = "ttft" if stream else "non_streamed"
        for entry, server in swarms.values():
            await latency_block(session, entry, server, meter, 20, stream)  # warm-up: connections, caches
        for mode in swarms:
            result[mode][kind] = []
        for i in range(args.repeat):
            for mode in (list(swarms) if i % 2 == 0 else list(reversed(swarms))):
                await asyncio.to_thread(meter.wait_quiet)
                result[mode][kind].append(await latency_block(session, *swarms[mode], meter, args.requests, stream))
        for mode in swarms:
            blocks = result[mode][kind]
            print(f"  {mode} {'streamed (TTFT)' if stream else 'non-streamed'}: added p50 "
                  f"{[round(b['added_p50_ms'], 2) for b in blocks]} ms, "
                  f"p99 {[round(b['added_p99_ms'], 2) for b in blocks]} ms", flush=True)
    return result


# 2. CPU per forwarded chunk.


async def chunk_block(session: aiohttp.ClientSession, via: Node, entry: Node, server: Node, meter: CpuMeter,
                      streams: int, idle: dict[str, float]) -> dict[str, Any]:
    """`streams` long streams one after another through `via`; CPU of both nodes per event."""
    since = meter.mark()
    cpu = {"entry": entry.cpu_s(), "server": server.cpu_s()}
    events = tokens = 0
    for _ in range(streams):
        answer = await complete(session, via.url, TINY_MODEL, CHUNK_MAX_TOKENS, True)
        events += answer.events
        tokens += answer.completion_tokens
    wall = meter.mark()[0] - since[0]
    block: dict[str, Any] = {"via": via.name, "events": events, "completion_tokens": tokens, "wall_s": wall,
                             "others_cores": meter.others_cores(since)}
    for name, node in (("entry", entry), ("server", server)):
        used = node.cpu_s() - cpu[name]
        block[f"{name}_cpu_s"] = used
        # Minus what the node burns anyway (overlay heartbeats, announcements), measured idle.
        block[f"{name}_cpu_per_chunk_ms"] = max(0.0, used - idle[name] * wall) / events * 1000
    return block


async def bench_chunks(session: aiohttp.ClientSession, swarms: dict[str, tuple[Node, Node]], meter: CpuMeter,
                       args: argparse.Namespace) -> dict[str, Any]:
    for entry, _ in swarms.values():
        await complete(session, entry.url, TINY_MODEL, CHUNK_MAX_TOKENS, True)  # warm-up
    await asyncio.to_thread(meter.wait_quiet)
    nodes = {f"{mode}/{role}": node for mode, pair in swarms.items()
             for role, node in zip(("entry", "server"), pair, strict=True)}
    before = {name: node.cpu_s() for name, node in nodes.items()}
    await asyncio.sleep(IDLE_WINDOW_S)
    idle = {name: (node.cpu_s() - before[name]) / IDLE_WINDOW_S for name, node in nodes.items()}
    result: dict[str, Any] = {mode: {"idle_cores": {role: idle[f"{mode}/{role}"] for role in ("entry", "server")},
                                     "routed": [], "direct": []} for mode in swarms}
    for i in range(args.repeat):
        for mode in (list(swarms) if i % 2 == 0 else list(reversed(swarms))):
            entry, server = swarms[mode]
            idle_of = result[mode]["idle_cores"]
            await asyncio.to_thread(meter.wait_quiet)
            result[mode]["routed"].append(await chunk_block(session, entry, entry, server, meter, args.chunk_streams,
                                                            idle_of))
            result[mode]["direct"].append(await chunk_block(session, server, entry, server, meter, args.chunk_streams,
                                                            idle_of))
    for mode in swarms:
        routed = result[mode]["routed"]
        print(f"  {mode}: entry CPU per forwarded chunk {[round(b['entry_cpu_per_chunk_ms'], 4) for b in routed]} ms; "
              f"serving node {[round(b['server_cpu_per_chunk_ms'], 4) for b in routed]} ms", flush=True)
    return result


# 3. Scaling.


async def client_loop(session: aiohttp.ClientSession, url: str, requests: int, max_tokens: int) -> list[Answer]:
    return [await complete(session, url, SLOW_MODEL, max_tokens, True) for _ in range(requests)]


def busy_fraction(answers: list[Answer], peer: str, start: float, end: float) -> float:
    """Share of the round a serving node had at least one of its requests open (as the clients saw them)."""
    spans = sorted((a.started, a.started + a.seconds) for a in answers if a.served_by == peer)
    busy, open_until = 0.0, start
    for begin, finish in spans:
        begin = max(begin, open_until)
        if finish > begin:
            busy += finish - begin
            open_until = finish
    return busy / (end - start)


def most_at_once(answers: list[Answer], peer: str) -> int:
    """The most requests a serving node had open at the same time."""
    edges = sorted(e for a in answers if a.served_by == peer for e in ((a.started, 1), (a.started + a.seconds, -1)))
    count = most = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        count += step
        most = max(most, count)
    return most


async def scaling_round(session: aiohttp.ClientSession, entry: Node, servers: list[Node], meter: CpuMeter,
                        args: argparse.Namespace, entry_idle: float) -> dict[str, Any]:
    clients = args.clients_per_node * len(servers)
    since = meter.mark()
    cpu_before = entry.cpu_s()
    loops = await asyncio.gather(*(
        client_loop(session, entry.url, args.requests_per_client, args.slow_tokens) for _ in range(clients)
    ))
    wall = meter.mark()[0] - since[0]
    answers = [a for loop in loops for a in loop]
    tokens = sum(a.completion_tokens for a in answers)
    events = sum(a.events for a in answers)
    names = {s.peer_id: s.name for s in servers}
    end = since[0] + wall
    return {
        "clients": clients,
        "wall_s": wall,
        "completion_tokens": tokens,
        "aggregate_tps": tokens / wall,
        "served_by": dict(Counter(names.get(a.served_by, a.served_by) for a in answers)),
        "busy_fraction": {names[s.peer_id]: busy_fraction(answers, s.peer_id, since[0], end) for s in servers},
        "most_at_once": {names[s.peer_id]: most_at_once(answers, s.peer_id) for s in servers},
        "ttft_ms_max": max(a.ttft_s or 0.0 for a in answers) * 1000,
        "entry_cpu_s": entry.cpu_s() - cpu_before,
        "entry_cpu_per_chunk_ms": max(0.0, entry.cpu_s() - cpu_before - entry_idle * wall) / events * 1000,
        "events": events,
        "others_cores": meter.others_cores(since),
    }


async def bench_scaling(session: aiohttp.ClientSession, entry: Node, meter: CpuMeter, workdir: Path, token: str,
                        args: argparse.Namespace, started: list[Node], entry_idle: float) -> dict[str, Any]:
    servers: list[Node] = []
    result: dict[str, Any] = {}
    for count in args.nodes:
        while len(servers) < count:
            node = Node(f"slow{len(servers) + 1}", workdir, token, bootstrap=entry.bootstrap_addr,
                        launcher=["--token-ms", str(args.token_ms), "--slots", str(args.slots)],
                        p2pai=["--model", str(workdir / f"{SLOW_MODEL}.gguf"), "--preload"])
            node.start()
            started.append(node)
            servers.append(node)
            meter.pids.append(node.pid)
        await asyncio.gather(*(node.ready(session) for node in servers if not node.peer_id))
        await wait_for_nodes(session, entry, SLOW_MODEL, count)
        await asyncio.gather(*(complete(session, entry.url, SLOW_MODEL, 2, True) for _ in range(count)))  # warm-up
        rounds = []
        for _ in range(args.repeat):
            await asyncio.to_thread(meter.wait_quiet)
            rounds.append(await scaling_round(session, entry, servers, meter, args, entry_idle))
        result[str(count)] = rounds
        print(f"  {count} serving node(s): aggregate {[round(r['aggregate_tps'], 1) for r in rounds]} tok/s, "
              f"requests per node {[r['served_by'] for r in rounds]}, node busy fraction "
              f"{[{k: round(v, 2) for k, v in r['busy_fraction'].items()} for r in rounds]}", flush=True)
    return result


# Report.


def median_of(blocks: list[dict[str, Any]], key: str) -> float:
    return statistics.median(b[key] for b in blocks)


def verdict(value: float, target: float, at_most: bool) -> str:
    met = value <= target if at_most else value >= target
    return f"{'<=' if at_most else '>='} {target:g}: {'met' if met else 'MISSED'}"


def summarise(results: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    summary: dict[str, Any] = {}
    lines = ["| measurement | plaintext: direct / routed / added | TLS: direct / routed / added | "
             "TLS − plaintext | target (TLS) |",
             "| --- | --- | --- | --- | --- |"]
    for kind, label in (("non_streamed", f"non-streamed ({LATENCY_MAX_TOKENS} tokens) ms"), ("ttft", "TTFT ms")):
        for q in ("p50", "p99"):
            cells = []
            for mode in MODES:
                blocks = results["latency"][mode][kind]
                figures = {name: median_of(blocks, f"{name}_{q}_ms") for name in ("direct", "routed", "added")}
                summary[f"{mode}/{kind}_{q}"] = {f"{name}_ms": value for name, value in figures.items()}
                cells.append(f"{figures['direct']:.2f} / {figures['routed']:.2f} / {figures['added']:+.2f}")
            tls, plain = (summary[f"{mode}/{kind}_{q}"]["added_ms"] for mode in ("tls", "plaintext"))
            lines.append(f"| {label} {q} | {' | '.join(cells)} | {tls - plain:+.2f} | "
                         f"{verdict(tls, TARGETS[f'added_{q}_ms'], True)} |")
    cells = []
    for mode in MODES:
        chunks = results["chunks"][mode]
        figures = {"entry_ms": median_of(chunks["routed"], "entry_cpu_per_chunk_ms"),
                   "server_ms": median_of(chunks["routed"], "server_cpu_per_chunk_ms"),
                   "server_direct_ms": median_of(chunks["direct"], "server_cpu_per_chunk_ms"),
                   "events_per_stream": median_of(chunks["routed"], "events") / args.chunk_streams}
        summary[f"{mode}/chunk_cpu"] = figures
        cells.append(f"entry {figures['entry_ms']:.4f} (serving node {figures['server_ms']:.4f}, "
                     f"direct {figures['server_direct_ms']:.4f})")
    tls, plain = (summary[f"{mode}/chunk_cpu"]["entry_ms"] for mode in ("tls", "plaintext"))
    lines.append(f"| CPU per streamed chunk ms (tiny model, {CHUNK_MAX_TOKENS} tokens) | {' | '.join(cells)} | "
                 f"{tls - plain:+.4f} (entry) | {verdict(tls, TARGETS['entry_cpu_per_chunk_ms'], True)} |")
    scaling = results["scaling"]
    base = median_of(scaling[str(args.nodes[0])], "aggregate_tps")
    ideal_per_node = args.slots * 1000 / args.token_ms
    scale_lines = [("| serving nodes | clients | aggregate tok/s | ideal tok/s | efficiency | worst round efficiency | "
                    "entry CPU per chunk ms | worst TTFT ms | target |"),
                   "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    summary["scaling"] = {}
    for count_text, rounds in scaling.items():
        count = int(count_text)
        aggregate = median_of(rounds, "aggregate_tps")
        efficiency = aggregate / (count / args.nodes[0] * base)
        cpu = median_of(rounds, "entry_cpu_per_chunk_ms")
        worst = min(r["aggregate_tps"] for r in rounds) / (count / args.nodes[0] * base)
        summary["scaling"][count_text] = {"aggregate_tps": aggregate, "efficiency": efficiency,
                                          "worst_round_efficiency": worst, "entry_cpu_per_chunk_ms": cpu}
        target = verdict(efficiency, TARGETS["scaling_efficiency_4"], False) if count == 4 else ""
        ttft_max = median_of(rounds, "ttft_ms_max")
        scale_lines.append(f"| {count} | {rounds[0]['clients']} | {aggregate:.1f} | {ideal_per_node * count:.0f} | "
                           f"{efficiency:.3f} | {worst:.3f} | {cpu:.4f} | {ttft_max:.0f} | {target} |")
    every = ([b for mode in MODES for k in ("non_streamed", "ttft") for b in results["latency"][mode][k]]
             + [b for mode in MODES for k in ("routed", "direct") for b in results["chunks"][mode][k]]
             + [r for rounds in scaling.values() for r in rounds])
    summary["others_cores_max"] = max(b["others_cores"] for b in every)
    return summary, "\n".join(lines) + "\n\n" + "\n".join(scale_lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="timed blocks per measurement; medians are reported")
    parser.add_argument("--requests", type=int, default=300, help="direct/routed request pairs per latency block")
    parser.add_argument("--chunk-streams", type=int, default=3,
                        help=f"{CHUNK_MAX_TOKENS}-token streams per CPU-per-chunk block")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4], help="serving node counts to scale over")
    parser.add_argument("--clients-per-node", type=int, default=2, help="concurrent streaming clients per serving node")
    parser.add_argument("--requests-per-client", type=int, default=4, help="streams each client runs in a row")
    parser.add_argument("--slow-tokens", type=int, default=50, help="max_tokens of each scaling request")
    parser.add_argument("--token-ms", type=float, default=20.0, help="the slow backend's delay per token")
    parser.add_argument("--slots", type=int, default=1, help="the slow backend's generations at once per node")
    parser.add_argument("--profile-entry", type=Path, help="cProfile the TLS entry node's event loop into this file")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    return parser.parse_args(argv)


async def start_pair(session: aiohttp.ClientSession, workdir: Path, token: str, mode: str, tiny: Path,
                     started: list[Node], entry_launcher: list[str] | None = None) -> tuple[Node, Node]:
    """An entry node and a serving node with the tiny model, node-to-node over TLS or in plaintext (``mode``)."""
    env = PLAINTEXT if mode == "plaintext" else {}
    entry = Node(f"{mode}-entry", workdir, token, launcher=entry_launcher or [], p2pai=["--no-default-model"], env=env)
    entry.start()
    started.append(entry)
    await entry.ready(session)
    server = Node(f"{mode}-tiny1", workdir, token, bootstrap=entry.bootstrap_addr, launcher=[],
                  # Flash attention off: the tiny model decodes about 2,000 tokens/s without it and
                  # 850 with it (gemma-3-270m is faster with it, hence the node's default, auto).
                  p2pai=["--model", str(tiny), "--threads", "1", "--context-size", str(TINY_CONTEXT),
                         "--flash-attention", "off", "--preload"], env=env)
    server.start()
    started.append(server)
    await server.ready(session)
    await wait_for_nodes(session, entry, TINY_MODEL, 1)
    return entry, server


async def run(args: argparse.Namespace, workdir: Path, started: list[Node]) -> dict[str, Any]:
    from p2pai.token import new_token
    from tiny_gguf import write_tiny_gguf

    (workdir / "no-models").mkdir()
    tiny = write_tiny_gguf(workdir / f"{TINY_MODEL}.gguf", seed=1)
    shutil.copy(tiny, workdir / f"{SLOW_MODEL}.gguf")  # the slow backend never reads it; the node needs a file
    tokens = {mode: new_token() for mode in MODES}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        swarms: dict[str, tuple[Node, Node]] = {}
        for mode in MODES:
            profile = ["--profile", str(args.profile_entry.resolve())] if args.profile_entry and mode == "tls" else []
            swarms[mode] = await start_pair(session, workdir, tokens[mode], mode, tiny, started, profile)
        meter = CpuMeter([os.getpid(), *(node.pid for pair in swarms.values() for node in pair)])
        results: dict[str, Any] = {}
        print("1. added latency (tiny model, sequential, direct and through the entry node interleaved) ...",
              flush=True)
        results["latency"] = await bench_latency(session, swarms, meter, args)
        print("2. CPU per forwarded chunk ...", flush=True)
        results["chunks"] = await bench_chunks(session, swarms, meter, args)
        entry = swarms["tls"][0]
        for node in (swarms["tls"][1], *swarms["plaintext"]):  # their idle CPU is not needed for the rest
            node.stop()
            meter.pids.remove(node.pid)
        print(f"3. scaling over TLS (slow backend, {args.token_ms:g} ms per token, {args.slots} slot(s) per node) ...",
              flush=True)
        results["scaling"] = await bench_scaling(session, entry, meter, workdir, tokens["tls"], args, started,
                                                 results["chunks"]["tls"]["idle_cores"]["entry"])
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = datetime.now(timezone.utc)
    started: list[Node] = []
    with tempfile.TemporaryDirectory(prefix="p2pai-bench-routing-") as tmp:
        try:
            results = asyncio.run(run(args, Path(tmp), started))
        finally:
            for node in reversed(started):  # stopped by their own PIDs
                node.stop()
    summary, table = summarise(results, args)
    print()
    print(table)
    print(f"\nmost cores used by other processes during a measurement: {summary['others_cores_max']:.2f}")
    report = {
        "date": started_at.isoformat(timespec="seconds"),
        "duration_s": (datetime.now(timezone.utc) - started_at).total_seconds(),
        "machine": machine(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "prompt": PROMPT,
        "targets": TARGETS,
        "summary": summary,
        "table": table,
        "runs": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.output} ({report['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
