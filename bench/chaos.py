"""Chaos benchmark: a swarm under random faults, where every request must end explicitly.

Real `p2pai start` processes on 127.0.0.1 (`--no-mdns`, each bootstrapped to the first, every
one serving the tiny test models of tests/tiny_gguf.py with `--threads 1 --preload`). A few
clients send requests (streamed and non-streamed, chat and completions, short and long) through
random entry nodes (`--routing random`, so most answers cross a hop) while a driver, every few
seconds, SIGKILLs a node (and starts it again a few seconds later), freezes one with SIGSTOP (and
resumes it with SIGCONT), or restarts one gracefully (SIGTERM, then start); at least one node
stays up. Half of the faults aim at a node that is serving an answer another node relays, to
break answers mid-way. The driver signals only the PIDs it started.

Every request has a client-side deadline far above normal latency, and ends as one of:

- ok: the whole answer (greedy decoding on the tiny model never stops early: every answer must
  say `finish_reason: "length"` with `usage.completion_tokens == max_tokens`; a stream must end
  with `[DONE]`);
- an explicit error: an HTTP error whose body is OpenAI's error JSON, or an SSE error event in
  OpenAI's shape;
- entry down: the connection failed because the driver killed or stopped the node the client
  was talking to (nobody can answer for it; the client learns at once);
- bad: hung (the deadline passed), lost (the connection ended without any answer while the
  entry node was up), truncated (a stream without `[DONE]`, or an answer that stopped short
  with no error), malformed (an error not in OpenAI's shape, or an answer that does not parse).

It prints the counts by outcome, latency p50/p99 of the answered requests and the faults, and
exits 1 if any request went bad or the swarm did not recover. `tests/test_chaos.py` runs a
shortened version of the same code.

Run `python bench/chaos.py --help` for the options; see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

from bench_single_node import CpuMeter, machine  # noqa: E402
from bench_swarm import Node, get_json, scan_logs, wait_ready  # noqa: E402
from tiny_gguf import write_tiny_gguf  # noqa: E402

MODELS = {"tiny": (1, 4), "tiny-b": (2, 2)}
"""Served by every node: name -> (weights seed, slots)."""
CONTEXT = 2048
COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
STOP_TIMEOUT_S = 30.0
"""A node asked to stop (SIGTERM) gets this long to finish its requests before it is killed."""
SWARM_TIMEOUT_S = 60.0
OPENAI_ERROR_FIELDS = {"message", "type", "param", "code"}
BAD = ("hung", "lost", "truncated", "malformed")
DOWN = {"kill": "killed", "stop": "stopped"}
DEFAULT_OUTPUT = BENCH / "results" / "chaos.json"
_WORDS = ("the people of water hello world test model token peer node network answer question time way "
          "day number sound word find call first long make thing look more write").split()


@dataclass(frozen=True)
class Config:
    nodes: int = 4
    requests: int = 1000
    clients: int = 8
    duration_s: float = 900.0
    """The load stops after this long even if fewer requests were sent."""
    interval_s: float = 3.0
    """Mean time between two faults (each drawn from 0.5-1.5 times it)."""
    seed: int = 0
    short_tokens: tuple[int, int] = (4, 32)
    long_tokens: tuple[int, int] = (200, 800)
    long_share: float = 0.25
    stream_share: float = 0.5
    deadline_s: float = 90.0
    """A request not ended after this long is hung (normal answers take well under 10 s)."""
    down_s: tuple[float, float] = (1.0, 4.0)
    """How long a killed node stays down, and..."""
    frozen_s: tuple[float, float] = (1.0, 5.0)
    """...how long a frozen one stays frozen (the swarm declares a node offline after 2 s of silence)."""
    min_up: int = 1
    aim: float = 0.5
    """Share of the faults aimed at a node serving an answer relayed by another node at that moment
    (when there is one): the faults that break answers mid-way."""
    faults: tuple[str, ...] = ("kill", "freeze", "restart")
    """The faults dealt in turn: every len(faults) faults, one of each, in a random order."""


# The requests.


@dataclass(frozen=True)
class Spec:
    index: int
    path: str
    model: str
    stream: bool
    usage: bool
    """Stream with `stream_options.include_usage`."""
    max_tokens: int
    prompt: str
    top_logprobs: int | None = None
    """Chat only: the logprobs of this many alternatives with each token (the biggest events)."""
    n: int = 1
    """Choices: each must reach max_tokens."""

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "temperature": 0,
                                "stream": self.stream}
        if self.n != 1:
            body["n"] = self.n
        if self.path == CHAT:
            body["messages"] = [{"role": "user", "content": self.prompt}]
            if self.top_logprobs is not None:
                body.update(logprobs=True, top_logprobs=self.top_logprobs)
        else:
            body["prompt"] = self.prompt
        if self.stream and self.usage:
            body["stream_options"] = {"include_usage": True}
        return body

    @property
    def long(self) -> bool:
        return self.max_tokens >= 100


def make_specs(config: Config) -> list[Spec]:
    """The request mix, drawn from the seed: the same for every run with that seed."""
    rng = random.Random(config.seed)
    specs = []
    for index in range(config.requests):
        long = rng.random() < config.long_share
        words = rng.randint(150, 300) if rng.random() < 0.2 else rng.randint(2, 12)
        specs.append(Spec(
            index=index,
            path=rng.choice((COMPLETIONS, CHAT)),
            model=rng.choices(list(MODELS), weights=(4, 1))[0],
            stream=rng.random() < config.stream_share,
            usage=rng.random() < 0.8,
            max_tokens=rng.randint(*(config.long_tokens if long else config.short_tokens)),
            prompt=" ".join(rng.choice(_WORDS) for _ in range(words)),
        ))
    return specs


@dataclass
class Outcome:
    index: int
    entry: str
    kind: str
    """ok, http_error, stream_error, entry_down, or one of BAD."""
    started: float
    seconds: float
    status: int | None = None
    code: str | None = None
    detail: str = ""
    served_by: str | None = None
    long: bool = False
    stream: bool = False
    error: dict[str, Any] | None = None
    """The OpenAI error object of an explicit error."""

    @property
    def label(self) -> str:
        if self.kind == "http_error":
            return f"http {self.status} {self.code}"
        if self.kind == "stream_error":
            return f"stream error {self.code}"
        if self.kind == "entry_down":
            return "entry " + self.detail.split()[0]
        return self.kind


class Verdict(Exception):
    """How a request ended, raised from wherever that became clear."""

    def __init__(self, kind: str, detail: str = "", code: str | None = None,
                 error: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.code, self.error = kind, detail, code, error


def openai_error(data: Any) -> dict[str, Any] | None:
    """The error object if ``data`` is OpenAI's error JSON, else None."""
    error = data.get("error") if isinstance(data, dict) else None
    if (isinstance(error, dict) and set(error) == OPENAI_ERROR_FIELDS and isinstance(error["message"], str)
            and error["message"] and isinstance(error["type"], str) and isinstance(error["code"], (str, type(None)))):
        return error
    return None


def _piece(choice: dict[str, Any], chat: bool) -> str | None:
    return (choice.get("delta") or {}).get("content") if chat else choice.get("text")


def judge_answer(data: Any, spec: Spec) -> None:
    """A non-streamed 200: raises Verdict unless it is the whole answer."""
    try:
        choices = data["choices"]
        texts = [c["message"]["content"] if spec.path == CHAT else c["text"] for c in choices]
        finishes, tokens = [c["finish_reason"] for c in choices], data["usage"]["completion_tokens"]
    except (KeyError, IndexError, TypeError) as exc:
        raise Verdict("malformed", f"answer without {exc}") from None
    if finishes != ["length"] * spec.n or tokens != spec.max_tokens * spec.n or not all(texts):
        raise Verdict("truncated", f"finish_reason {finishes}, {tokens} of {spec.max_tokens} x {spec.n} tokens")


class StreamJudge:
    """Reads an SSE answer event by event; `verdict()` at its end."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.done = False
        self.error: dict[str, Any] | None = None
        self.finishes: dict[int, str] = {}
        """finish_reason by choice index."""
        self.usage: dict[str, Any] | None = None
        self.pieces = 0

    def feed(self, line: bytes) -> None:
        line = line.rstrip(b"\r\n")
        if not line.startswith(b"data: "):
            return  # blank separators, comments
        data = line[6:]
        if self.done:
            raise Verdict("malformed", "an event after [DONE]")
        if data == b"[DONE]":
            self.done = True
            return
        try:
            event = json.loads(data)
        except ValueError:
            raise Verdict("malformed", f"an event that is not JSON: {data[:80]!r}") from None
        if "error" in event:
            self.error = openai_error(event)
            if self.error is None:
                raise Verdict("malformed", f"an error event not in OpenAI's shape: {data[:200]!r}")
            return
        for choice in event.get("choices") or ():
            if _piece(choice, self.spec.path == CHAT):
                self.pieces += 1
            if choice.get("finish_reason") is not None:
                if choice.get("index") in self.finishes:
                    raise Verdict("malformed", "two finish_reason events for one choice")
                self.finishes[choice.get("index")] = choice["finish_reason"]
        if event.get("usage"):
            self.usage = event["usage"]

    def verdict(self, broken: str | None = None) -> None:
        """Raise Verdict unless the stream was complete; ``broken`` says how the connection failed."""
        spec = self.spec
        if self.error is not None:  # explicit, whatever happened to the connection afterwards
            raise Verdict("stream_error", self.error["message"], self.error["code"], self.error)
        if broken is not None:
            raise Verdict("truncated", f"the stream broke after {self.pieces} pieces: {broken}")
        if not self.done:
            raise Verdict("truncated", f"the stream ended without [DONE] after {self.pieces} pieces")
        tokens = self.usage.get("completion_tokens") if self.usage else None
        expected = spec.max_tokens * spec.n
        if (self.finishes != {i: "length" for i in range(spec.n)} or (spec.usage and tokens != expected)
                or not 0 < self.pieces <= expected):
            raise Verdict("truncated", f"finish_reason {self.finishes}, usage {tokens} and {self.pieces} pieces "
                                       f"for max_tokens {spec.max_tokens} x {spec.n}")


async def exchange(session: aiohttp.ClientSession, url: str, spec: Spec, seen: dict[str, Any]) -> None:
    """Send one request and read its answer: returns if it is whole, else raises Verdict or a client error.

    ``seen`` gets `status` once the response began (a transport failure after that is a broken
    answer, before it a request without any answer) and the serving node's id."""
    async with session.post(url + spec.path, json=spec.body()) as resp:
        seen["status"] = resp.status
        seen["served_by"] = resp.headers.get("X-P2PAI-Served-By")
        if resp.status != 200:
            body = await resp.read()
            try:
                error = openai_error(json.loads(body))
            except ValueError:
                error = None
            if error is None:
                raise Verdict("malformed", f"HTTP {resp.status} with a body not in OpenAI's shape: {body[:200]!r}")
            raise Verdict("http_error", error["message"], error["code"], error)
        if not spec.stream:
            try:
                data = json.loads(await resp.read())
            except ValueError:
                raise Verdict("malformed", "a 200 answer that is not JSON") from None
            judge_answer(data, spec)
            return
        judge = StreamJudge(spec)
        try:
            async for line in resp.content:
                judge.feed(line)
        except aiohttp.ClientError as exc:
            judge.verdict(broken=f"{type(exc).__name__}: {exc}")
        judge.verdict()


# The swarm and its faults.


class ChaosNode(Node):
    """A node of the swarm with the state the driver gave it: up, frozen, down or starting."""

    state = "starting"


@dataclass
class Fault:
    at: float
    node: str
    action: str
    """kill, freeze, resume, stop, stop_timeout (killed after STOP_TIMEOUT_S), start, ready."""


@dataclass
class FaultLog:
    events: list[Fault] = field(default_factory=list)

    def note(self, node: ChaosNode, action: str) -> None:
        self.events.append(Fault(time.monotonic(), node.name, action))

    def took_down(self, node: str, start: float, end: float) -> Fault | None:
        """The kill or stop the driver did to ``node`` between ``start`` and ``end``, if any."""
        for event in self.events:
            if event.node == node and start <= event.at <= end and event.action in ("kill", "stop"):
                return event
        return None

    def counts(self) -> Counter[str]:
        return Counter(event.action for event in self.events)


class Relays:
    """The requests in flight, to know which nodes serve answers that another node relays."""

    def __init__(self) -> None:
        self._open: dict[int, tuple[ChaosNode, dict[str, Any]]] = {}

    @contextlib.contextmanager
    def track(self, entry: ChaosNode, seen: dict[str, Any]) -> Iterator[None]:
        self._open[id(seen)] = (entry, seen)
        try:
            yield
        finally:
            del self._open[id(seen)]

    def servers(self, nodes: list[ChaosNode]) -> list[ChaosNode]:
        by_id = {node.id: node for node in nodes}
        served = (seen.get("served_by") for entry, seen in self._open.values() if seen.get("served_by") != entry.id)
        return [by_id[peer] for peer in served if peer in by_id]


class Driver:
    """Every 0.5-1.5 x interval: kill, freeze or restart a random node that is up, keeping min_up up.

    A killed node starts again after Config.down_s, a frozen one resumes after Config.frozen_s; a
    restart is SIGTERM (the node finishes its requests, at most STOP_TIMEOUT_S), then start."""

    def __init__(self, nodes: list[ChaosNode], config: Config, session: aiohttp.ClientSession, log: FaultLog,
                 relays: Relays) -> None:
        self._nodes = nodes
        self._relays = relays
        self._config = config
        self._session = session
        self._log = log
        self._rng = random.Random(config.seed + 1)
        self._pending: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Inject faults until ``stop``; then wait until every node is up again."""
        config = self._config
        deck: list[str] = []
        while True:
            try:
                await asyncio.wait_for(stop.wait(), self._rng.uniform(0.5, 1.5) * config.interval_s)
                break
            except asyncio.TimeoutError:
                pass
            up = [node for node in self._nodes if node.state == "up"]
            if len(up) <= config.min_up:
                continue
            aimed = [node for node in self._relays.servers(self._nodes) if node in up]
            node = self._rng.choice(aimed if aimed and self._rng.random() < config.aim else up)
            if not deck:  # every kind of fault in turn, each turn in a random order
                deck = self._rng.sample(config.faults, len(config.faults))
            fault = getattr(self, f"_{deck.pop()}")
            task = asyncio.create_task(fault(node))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        await asyncio.gather(*self._pending)  # resumes and restarts: the swarm ends whole

    async def _kill(self, node: ChaosNode) -> None:
        node.state = "down"
        self._log.note(node, "kill")
        node.signal(signal.SIGKILL)
        await asyncio.to_thread(node.proc.wait)  # type: ignore[union-attr]
        await asyncio.sleep(self._rng.uniform(*self._config.down_s))
        await self._start(node)

    async def _freeze(self, node: ChaosNode) -> None:
        node.state = "frozen"
        self._log.note(node, "freeze")
        node.signal(signal.SIGSTOP)
        await asyncio.sleep(self._rng.uniform(*self._config.frozen_s))
        self._log.note(node, "resume")
        node.signal(signal.SIGCONT)
        node.state = "up"

    async def _restart(self, node: ChaosNode) -> None:
        node.state = "down"
        self._log.note(node, "stop")
        node.signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(node.proc.wait, STOP_TIMEOUT_S)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            self._log.note(node, "stop_timeout")
            node.signal(signal.SIGKILL)
            await asyncio.to_thread(node.proc.wait)  # type: ignore[union-attr]
        await self._start(node)

    async def _start(self, node: ChaosNode) -> None:
        node.state = "starting"
        self._log.note(node, "start")
        node.start()
        await wait_ready(self._session, node)
        self._log.note(node, "ready")
        node.state = "up"


def write_models(directory: Path, max_queue: int = 64) -> None:
    """The tiny test models, greedy by default, with room for the longest requests."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, (seed, slots) in MODELS.items():
        write_tiny_gguf(directory / f"{name}.gguf", seed=seed)
        (directory / f"{name}.yaml").write_text(
            f"name: {name}\nparameters:\n  model: {name}.gguf\n  temperature: 0\n"
            f"context_size: {CONTEXT}\nparallel: {slots}\nmax_queue: {max_queue}\n")


async def start_swarm(session: aiohttp.ClientSession, workdir: Path, count: int) -> list[ChaosNode]:
    """`count` nodes, each bootstrapped to the first, until the first sees every model loaded on all."""
    from p2pai.token import new_token

    token = new_token()
    models = workdir / "models"
    write_models(models)
    # Random routing: three requests in four cross a hop (least-loaded would serve most where they arrive).
    extra = ("--threads", "1", "--preload", "--no-default-model", "--routing", "random")
    first = ChaosNode("n1", workdir, token, models, mdns=False, extra=extra)
    first.start()
    await wait_ready(session, first)
    nodes = [first] + [ChaosNode(f"n{i}", workdir, token, models, mdns=False, bootstrap=first.bootstrap_addr(),
                                 extra=extra) for i in range(2, count + 1)]
    for node in nodes[1:]:
        node.start()
    for node in nodes[1:]:
        await wait_ready(session, node)
    deadline = time.monotonic() + SWARM_TIMEOUT_S
    while time.monotonic() < deadline:
        listing = await get_json(session, first.url + "/v1/models")
        loaded = {card["id"]: len(card.get("loaded_on", ())) for card in (listing or {}).get("data", ())}
        if all(loaded.get(name) == count for name in MODELS):
            for node in nodes:
                node.state = "up"
            return nodes
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the swarm of {count} did not form:\n{first.log_tail()}")


# The load.


async def send(session: aiohttp.ClientSession, node: ChaosNode, spec: Spec, config: Config, log: FaultLog,
               relays: Relays) -> Outcome:
    started = time.monotonic()
    seen: dict[str, Any] = {}
    kind, detail, code, error = "ok", "", None, None
    try:
        async with asyncio.timeout(config.deadline_s):
            with relays.track(node, seen):
                await exchange(session, node.url, spec, seen)
    except Verdict as verdict:
        kind, detail, code, error = verdict.kind, verdict.detail, verdict.code, verdict.error
    except TimeoutError:
        kind, detail = "hung", f"no end after {config.deadline_s:.0f} s"
    except (aiohttp.ClientError, ConnectionError) as exc:
        kind = "lost" if "status" not in seen else "truncated"
        detail = f"{type(exc).__name__}: {exc}"
    ended = time.monotonic()
    if kind in ("lost", "truncated") and (fault := log.took_down(node.name, started, ended)):
        # The client's own node went away: nobody could answer.
        kind = "entry_down"
        detail = f"{DOWN[fault.action]} {fault.at - started:.2f} s after the request was sent ({detail})"
    return Outcome(spec.index, node.name, kind, started, ended - started, seen.get("status"), code, detail,
                   seen.get("served_by"), spec.long, spec.stream, error)


async def client(session: aiohttp.ClientSession, nodes: list[ChaosNode], queue: list[Spec], config: Config,
                 log: FaultLog, relays: Relays, rng: random.Random, until: float, outcomes: list[Outcome]) -> None:
    """Send the queue's requests one after another, each through a random node that is up or frozen."""
    while queue and time.monotonic() < until:
        spec = queue.pop()
        entries = [node for node in nodes if node.state in ("up", "frozen")]
        outcomes.append(await send(session, rng.choice(entries), spec, config, log, relays))


@dataclass
class Report:
    config: Config
    outcomes: list[Outcome]
    faults: Counter[str]
    load_s: float
    ids: dict[str, str]
    """Node name -> peer id (kept across restarts in the node's data dir)."""
    peer_metrics: dict[str, dict[str, int]]
    """Per node: the requests it forwarded, and those lost with or crashed on its peers."""
    recovered: dict[str, bool]
    """Per node: it answered a request after the chaos."""
    log_problems: dict[str, list[str]]
    others_cores: float
    """Cores used on average by processes other than the benchmark's during the load."""

    @property
    def bad(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind in BAD]

    def counts(self) -> Counter[str]:
        return Counter(o.label for o in self.outcomes)

    @property
    def forwarded(self) -> int:
        """Answers served by another node than the one the client sent the request to."""
        return sum(1 for o in self.outcomes if o.served_by and o.served_by != self.ids[o.entry])

    def latency_s(self, q: float, long: bool | None = None) -> float | None:
        values = sorted(o.seconds for o in self.outcomes if o.kind == "ok" and long in (None, o.long))
        if not values:
            return None
        return values[min(len(values) - 1, int(q * len(values)))]

    def render(self) -> str:
        lines = [f"{len(self.outcomes)} requests in {self.load_s:.0f} s through {self.config.nodes} nodes, "
                 f"{self.config.clients} clients at once:"]
        for label, count in sorted(self.counts().items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"  {count:6d}  {label}")
        for name, long in (("all", None), ("short", False), ("long", True)):
            p50, p99 = self.latency_s(0.5, long), self.latency_s(0.99, long)
            if p50 is not None and p99 is not None:
                lines.append(f"latency of answered requests, {name}: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
        faults = self.faults
        lines.append(f"faults: {faults['kill']} kills, {faults['freeze']} freezes ({faults['resume']} resumed), "
                     f"{faults['stop']} graceful restarts ({faults['stop_timeout']} killed after "
                     f"{STOP_TIMEOUT_S:.0f} s), {faults['start']} starts")
        totals: Counter[str] = Counter()
        for metrics in self.peer_metrics.values():
            totals.update(metrics)
        lines.append(f"{self.forwarded} answers came from another node than the entry; the entries' counters "
                     f"(since their last start): {totals['requests']} forwarded, {totals['lost']} lost with a peer, "
                     f"{totals['crashed']} crashed a peer's model")
        lines.append(f"other processes used {self.others_cores:.2f} cores on average meanwhile")
        lines.append("every node answered after the chaos" if all(self.recovered.values())
                     else f"NOT recovered: {[n for n, ok in self.recovered.items() if not ok]}")
        for outcome in self.bad[:20]:
            lines.append(f"BAD #{outcome.index} via {outcome.entry}: {outcome.kind} after {outcome.seconds:.1f} s: "
                         f"{outcome.detail}")
        return "\n".join(lines)


async def final_state(session: aiohttp.ClientSession, nodes: list[ChaosNode]
                      ) -> tuple[dict[str, bool], dict[str, dict[str, int]]]:
    """Does each node answer now, and what did it count for its peers?"""
    recovered, metrics = {}, {}
    for node in nodes:
        spec = Spec(-1, COMPLETIONS, "tiny", False, False, 4, "hello")
        try:
            async with asyncio.timeout(30):
                await exchange(session, node.url, spec, {})
            recovered[node.name] = True
        except (Verdict, TimeoutError, aiohttp.ClientError):
            recovered[node.name] = False
        view = await get_json(session, node.url + "/api/p2p") or {}
        totals: Counter[str] = Counter()
        for peer in view.get("federated_nodes", ()):
            if peer.get("metrics"):
                totals.update({key: peer["metrics"][key] for key in ("requests", "lost", "crashed")})
        metrics[node.name] = dict(totals)
    return recovered, metrics


async def run(config: Config, workdir: Path) -> Report:
    """Start the swarm, load it under faults, and report; every node is stopped at the end."""
    nodes: list[ChaosNode] = []
    connector = aiohttp.TCPConnector(force_close=True, limit=0)  # a killed node leaves no stale connection
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        try:
            nodes = await start_swarm(session, workdir, config.nodes)
            log = FaultLog()
            queue = list(reversed(make_specs(config)))
            outcomes: list[Outcome] = []
            stop = asyncio.Event()
            relays = Relays()
            meter = CpuMeter([os.getpid()])
            await asyncio.to_thread(meter.wait_quiet)
            since = meter.mark()
            driver = asyncio.create_task(Driver(nodes, config, session, log, relays).run(stop))
            started = time.monotonic()
            rng = random.Random(config.seed + 2)
            until = started + config.duration_s
            await asyncio.gather(*(client(session, nodes, queue, config, log, relays, rng, until, outcomes)
                                   for _ in range(config.clients)))
            load_s = time.monotonic() - started
            others = meter.others_cores(since)
            stop.set()
            await driver
            recovered, metrics = await final_state(session, nodes)
        finally:
            for node in nodes:
                await asyncio.to_thread(node.stop)
    return Report(config, sorted(outcomes, key=lambda o: o.index), log.counts(), load_s,
                  {node.name: node.id or "" for node in nodes}, metrics, recovered, scan_logs(workdir), others)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = Config()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=defaults.requests, help="requests to send (%(default)s)")
    parser.add_argument("--duration", type=float, default=defaults.duration_s,
                        help="stop sending after this many seconds (%(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seeds the request mix and the faults")
    parser.add_argument("--clients", type=int, default=defaults.clients, help="requests at once (%(default)s)")
    parser.add_argument("--nodes", type=int, default=defaults.nodes, help="(%(default)s)")
    parser.add_argument("--interval", type=float, default=defaults.interval_s,
                        help="mean seconds between faults (%(default)s)")
    parser.add_argument("--deadline", type=float, default=defaults.deadline_s,
                        help="seconds after which a request counts as hung (%(default)s)")
    parser.add_argument("--faults", default=",".join(defaults.faults),
                        help="comma-separated faults dealt in turn (%(default)s)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    parser.add_argument("--keep-logs", type=Path, help="copy the nodes' logs into this directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = Config(nodes=args.nodes, requests=args.requests, clients=args.clients, duration_s=args.duration,
                    interval_s=args.interval, seed=args.seed, deadline_s=args.deadline,
                    faults=tuple(args.faults.split(",")))
    started = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="p2pai-bench-chaos-") as tmp:
        report = asyncio.run(run(config, Path(tmp)))
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in Path(tmp).glob("*.log"):
                shutil.copy(log, args.keep_logs / log.name)
    text = report.render()
    print(text)
    for name, lines in report.log_problems.items():
        for line in lines[:5]:
            print(f"  {name} logged: {line}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "config": asdict(config),
        "summary": text,
        "counts": report.counts(),
        "faults": report.faults,
        "forwarded": report.forwarded,
        "others_cores": report.others_cores,
        "ids": report.ids,
        "peer_metrics": report.peer_metrics,
        "recovered": report.recovered,
        "log_problems": report.log_problems,
        "outcomes": [asdict(o) for o in report.outcomes],
    }, indent=1) + "\n")
    print(f"results written to {args.output}")
    return 1 if report.bad or not all(report.recovered.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
