"""Simulate a swarm of N nodes in one process: membership cost, detection, and routing quality.

    python bench/simulate_swarm.py [--sizes 10,100,1000] [--plot bench/simulate_swarm.png]

Two parts, both on a virtual clock with no sockets:

1. Membership: N real `GossipNode`s (p2pai/overlay/gossip.py) exchange real
   sealed and signed announcements (announcement.py) over an in-memory network
   (0.5-3 ms per message). Each node changes its payload (a real NodePayload
   with three models) every 2 s on average. Measured: messages and bytes per
   node per second in steady state, how long until every node sees a node that
   joins, how long until every node judges a node that dies (or freezes: in the
   simulation neither sends nor answers anything) offline, and the memory one
   node's membership table takes. Verifying a signature costs the same every
   time, so each distinct sealed message is verified once and the result shared
   (counted per receipt).
   The same figures for today's full mesh (overlay.py: every node sends its
   announcement to every other each second) are computed from the same
   announcement size.

2. Routing: N nodes with per-node speeds and slots serve M models of skewed
   popularity (Zipf), each node holding three on disk and at most two loaded
   (least recently used idle one unloaded). Requests arrive at random entry
   nodes. Each entry places them with the real `placement.rank` on what it
   knows: each node's figures as of its last announcement (at most every
   `GossipNode.announce_gap()` seconds at that size, measured in part 1), plus
   the requests it sent itself and the loads they triggered, as the router
   does. The oracle places with everyone's exact current figures, with the same
   formula. Measured: mean time to first token (queue wait + load wait + hop)
   against the oracle's, and the spread of queue lengths.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import statistics
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pai.identity import Identity
from p2pai.overlay.announcement import MAX_CLOCK_SKEW, Announcement, Rejected, open_sealed
from p2pai.overlay.gossip import SMALL_SWARM, GossipNode, Keys, Peer
from p2pai.routing.placement import (
    PROBES_PER_ROUND,
    Candidate,
    Policy,
    another_round,
    load_wait,
    rank,
    rank_probed,
    to_probe,
)
from p2pai.swarm.payload import Capacity, DataEndpoint, Memory, ModelOffer, NodePayload
from p2pai.swarm.swarm import PUBLISH_INTERVAL

KEYS = Keys(seal_key=bytes(range(32)), discriminator="sim")
TICK = 0.25


# Part 1: membership


class Network:
    """Messages between GossipNodes on a virtual clock; a node that is down neither sends nor receives."""

    def __init__(self, rng: random.Random) -> None:
        self.now = 0.0
        self.rng = rng
        self.nodes: dict[str, GossipNode] = {}
        self.down: set[str] = set()
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (when, next(self._order), action))

    def send(self, sender: str, sends: list[tuple[str, bytes]]) -> None:
        if sender in self.down:
            return
        for to, message in sends:
            self.at(self.now + self.rng.uniform(0.0005, 0.003), lambda to=to, m=message: self._deliver(sender, to, m))

    def _deliver(self, sender: str, to: str, message: bytes) -> None:
        node = self.nodes.get(to)
        if node is not None and to not in self.down:
            self.send(to, node.receive(sender, message, self.now))

    def add(self, node: GossipNode) -> None:
        self.nodes[node.id] = node
        self._tick(node, self.now + self.rng.uniform(0, TICK))

    def _tick(self, node: GossipNode, when: float) -> None:
        def tick() -> None:
            if node.id not in self.down:
                self.send(node.id, node.tick(self.now))
                self._tick(node, self.now + TICK)
        self.at(when, tick)

    def run_until(self, until: float) -> None:
        while self._events and self._events[0][0] <= until:
            when, _, action = heapq.heappop(self._events)
            self.now = when
            action()
        self.now = until


def node_payload(rng: random.Random, in_flight: int = 0) -> dict[str, object]:
    """A realistic announcement payload: three models, one loaded, live figures."""
    offers = [
        ModelOffer(name=f"model-{rng.randrange(1000):03d}-q4_k_m", size=rng.randrange(2**28, 2**32), loaded=i == 0,
                   tasks=["chat", "completion"], slots=4, in_flight=in_flight if i == 0 else 0, memory=2**30,
                   load_s=round(rng.uniform(0.5, 8), 1), decode_tps=round(rng.uniform(10, 60), 1) if i == 0 else None)
        for i in range(3)
    ]
    return NodePayload(
        endpoint=DataEndpoint(hosts=[f"10.0.{rng.randrange(256)}.{rng.randrange(256)}"],
                              port=rng.randrange(1024, 65535)),
        models=offers, capacity=Capacity(slots=4, in_flight=in_flight), memory=Memory(total=2**34, available=2**33),
        load_speed=3e8, cpus=8,
    ).model_dump(exclude_defaults=True)


@dataclass
class MembershipResult:
    n: int
    sealed_bytes: int
    announce_gap: float
    sent_bytes_per_s: float
    received_bytes_per_s: float
    messages_per_s: float
    join_convergence_s: float
    detection_max_s: float
    detection_median_s: float
    memory_per_node: int
    neighbours: float
    """Members a node sends to (the connections it keeps), on average."""
    full_mesh_bytes_per_s: float
    verifications: int
    wall_s: float


def simulate_membership(n: int, seed: int = 1, steady: float = 30.0) -> MembershipResult:
    started = time.perf_counter()
    rng = random.Random(seed)
    network = Network(rng)
    verified: dict[bytes, Announcement] = {}
    counts = Counter[str]()

    def opener(sealed: bytes, at: float, max_age: float) -> Announcement:
        """open_sealed, with the signature and decryption of a message already seen taken from a cache."""
        counts["receipts"] += 1
        announcement = verified.get(sealed)
        if announcement is None:
            announcement = verified[sealed] = open_sealed(sealed, KEYS.seal_key, KEYS.discriminator, at, max_age)
            counts["verified"] += 1
        elif not -MAX_CLOCK_SKEW <= at - announcement.timestamp <= max(max_age, MAX_CLOCK_SKEW):
            raise Rejected("stale")
        return announcement

    def new_node(index: int) -> GossipNode:
        return GossipNode(Identity.generate(), KEYS, f"node{index}", node_payload(rng), network.now,
                          random.Random(rng.random()), opener)

    nodes = [new_node(i) for i in range(n)]
    for node in nodes:  # a swarm that has been running: everyone knows everyone
        for other in nodes:
            if other is not node:
                node.receive(other.id, b"s" + len(other._sealed).to_bytes(4, "big") + other._sealed, 0.0)
        network.add(node)
    for node in nodes:  # payload changes: every 2 s on average per node, announced as the gap allows
        node.stagger(rng.uniform(0, node.announce_gap()))
        _churn(network, node, rng)
    network.run_until(5.0)
    before = [(nd.counters.sent_bytes, nd.counters.received_bytes, nd.counters.sent_messages) for nd in nodes]
    network.run_until(5.0 + steady)
    sent = sum(nd.counters.sent_bytes - b[0] for nd, b in zip(nodes, before, strict=True)) / n / steady
    received = sum(nd.counters.received_bytes - b[1] for nd, b in zip(nodes, before, strict=True)) / n / steady
    messages = sum(nd.counters.sent_messages - b[2] for nd, b in zip(nodes, before, strict=True)) / n / steady

    # A node joins through one member: when does every node know it?
    joined_at = network.now
    newcomer = new_node(n)
    seen: dict[str, float] = {}
    for node in nodes:
        node.listeners.append(lambda peer, entry, node=node: _first(seen, node.id, peer, entry, newcomer.id, network))
    network.add(newcomer)
    network.send(newcomer.id, newcomer.join(rng.choice(nodes).id))
    network.run_until(joined_at + 15.0)
    convergence = max(seen.values()) - joined_at if len(seen) == n else math.inf

    # A node dies (or freezes): when has every other node judged it offline?
    victim = rng.choice(nodes)
    died_at = network.now
    gone: dict[str, float] = {}
    for node in [*nodes, newcomer]:
        node.listeners.append(lambda peer, entry, node=node: _offline(gone, node.id, peer, entry, victim.id, network))
    network.down.add(victim.id)
    network.run_until(died_at + 15.0)
    times = [gone[node.id] - died_at if node.id in gone else math.inf
             for node in [*nodes, newcomer] if node is not victim]

    return MembershipResult(
        n=n, sealed_bytes=len(nodes[0]._sealed), announce_gap=nodes[0].announce_gap(),
        sent_bytes_per_s=sent, received_bytes_per_s=received, messages_per_s=messages,
        join_convergence_s=convergence, detection_max_s=max(times), detection_median_s=statistics.median(times),
        memory_per_node=_table_memory(nodes), neighbours=statistics.fmean(len(nd.neighbours()) for nd in nodes),
        full_mesh_bytes_per_s=(n - 1) * len(nodes[0]._sealed),
        verifications=counts["verified"], wall_s=time.perf_counter() - started,
    )


def _churn(network: Network, node: GossipNode, rng: random.Random) -> None:
    def change() -> None:
        if node.id not in network.down:
            network.send(node.id, node.set_payload(node_payload(rng, rng.randrange(5)), network.now))
            _churn(network, node, rng)
    network.at(network.now + rng.expovariate(0.5), change)


def _first(seen: dict[str, float], observer: str, peer: str, entry: Peer | None, newcomer: str, net: Network) -> None:
    if peer == newcomer and entry is not None and entry.online:
        seen.setdefault(observer, net.now)


def _offline(gone: dict[str, float], observer: str, peer: str, entry: Peer | None, victim: str, net: Network) -> None:
    if peer == victim and (entry is None or not entry.online):
        gone.setdefault(observer, net.now)


def _table_memory(nodes: list[GossipNode]) -> int:
    """Bytes one node's membership state takes when it opened every announcement itself (nothing shared)."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    node = GossipNode(Identity.generate(), KEYS, "probe", {}, 0.0, random.Random(0))
    for other in nodes:
        node.receive(other.id, b"a" + other._sealed, other._announced + 0.01)
    size = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return size


# Part 2: routing


@dataclass
class ModelSpec:
    name: str
    size: int
    weight: float


Job = tuple[float, Callable[[], None], Callable[[], None]]
"""A request on a node: its service time, what happens at its first token and when it is done."""


@dataclass
class Hosted:
    """A model on one node."""

    loaded: bool = False
    ready_at: float = 0.0
    """While loading: when it is ready."""
    running: int = 0
    queue: list[Job] = field(default_factory=list)
    """Requests waiting for a slot."""
    last_used: float = 0.0

    @property
    def loading(self) -> bool:
        return not self.loaded and self.ready_at > 0


@dataclass
class SimNode:
    id: str
    slots: int
    tps_per_slot: float
    load_bytes_per_s: float
    models: dict[str, Hosted]
    max_loaded: int = 2
    announced: dict[str, tuple[bool, bool, int, int]] = field(default_factory=dict)
    """Model -> (loaded, loading, in_flight, queued) as last announced."""
    announced_at: float = -1e9
    pending: bool = False
    """A change waits for the next announcement."""

    def load_s(self, spec: ModelSpec) -> float:
        return 1.0 + spec.size / self.load_bytes_per_s

    def fits(self, model: str) -> bool:
        hosted = self.models[model]
        if hosted.loaded or hosted.loading:
            return True
        resident = [h for h in self.models.values() if h.loaded or h.loading]
        return len(resident) < self.max_loaded or any(not _busy(h) for h in resident)

    def figures(self, model: str) -> tuple[bool, bool, int, int]:
        hosted = self.models[model]
        return hosted.loaded, hosted.loading, hosted.running, len(hosted.queue)


def _busy(hosted: Hosted) -> bool:
    return hosted.loading or hosted.running > 0 or bool(hosted.queue)


@dataclass
class RoutingResult:
    n: int
    mode: str
    requests: int
    mean_ttft: float
    p95_ttft: float
    loads: int
    queue_mean: float
    queue_p95: float
    queue_max: int
    probes: float
    """Candidates asked for their figures, per request."""
    by_model: dict[str, tuple[int, float]]
    """Model -> (requests, their summed time to first token), warm-up excluded."""


MODES = ("oracle", "mesh", "gossip", "probe")
"""oracle: exact figures of every node; mesh: the router's view (its own live figures, the others'
announced figures, its own requests and the loads they triggered) with today's full mesh, where
figures are at most PUBLISH_INTERVAL old; gossip: the same view with figures as old as
GossipNode.announce_gap() makes them at that size; probe: the router's policy beyond SMALL_SWARM
nodes: the gossip view, with rounds of `placement.to_probe` candidates asked for their exact
figures (one round trip each) while `another_round` says so (up to SMALL_SWARM nodes it is the
mesh view, as the router does not probe there)."""
PROBE_RTT = 0.002
"""One probe round trip (loopback or LAN), added to a request's time to first token per round."""


class RoutingSim:
    def __init__(self, n: int, gap: float, seed: int, mode: str, duration: float, load: float = 0.6) -> None:
        self.rng = random.Random(seed)  # the same swarm and workload for every mode
        # A node reads its live figures every PUBLISH_INTERVAL.
        self.gap = PUBLISH_INTERVAL if mode == "mesh" else max(gap, PUBLISH_INTERVAL)
        self.mode = mode
        self.oracle = mode == "oracle"
        self.probing = mode == "probe" and n > SMALL_SWARM
        self.duration = duration
        rng = self.rng
        count = max(6, min(40, n // 3))
        weights = [1 / (i + 1) ** 1.1 for i in range(count)]
        self.specs = [ModelSpec(f"m{i}", rng.randrange(2**28, 2**32), weights[i]) for i in range(count)]
        self.nodes: dict[str, SimNode] = {}
        for i in range(n):
            held = _sample_weighted(rng, self.specs, 3)
            models = {spec.name: Hosted() for spec in held}
            models[held[0].name].loaded = True
            node = SimNode(f"n{i}", rng.choice([1, 2, 4]), rng.lognormvariate(math.log(25), 0.5),
                           rng.lognormvariate(math.log(3e8), 0.7), models)
            self.nodes[node.id] = node
        self.holders = {spec.name: [nd for nd in self.nodes.values() if spec.name in nd.models] for spec in self.specs}
        self.specs = [spec for spec in self.specs if self.holders[spec.name]]
        capacity = sum(nd.slots * nd.tps_per_slot / 128 for nd in self.nodes.values())
        self.rate = load * capacity
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self.order = itertools.count()
        self.now = 0.0
        self.outstanding: dict[tuple[str, str, str], int] = Counter()  # (entry, node, model)
        self.loads_triggered: dict[tuple[str, str, str], float] = {}  # (entry, node, model) -> ready at
        self.ttfts: list[float] = []
        self.ttft_models: list[str] = []
        """The model of each request in ``ttfts``."""
        self.queue_samples: list[int] = []
        self.loads = 0
        self.probes = 0
        for node in self.nodes.values():
            self._announce(node)

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.events, (when, next(self.order), action))

    def run(self) -> RoutingResult:
        rng = self.rng
        arrivals = rng.expovariate(self.rate)
        entries = list(self.nodes)
        weights = [spec.weight for spec in self.specs]
        while arrivals < self.duration:
            spec = rng.choices(self.specs, weights)[0]
            tokens = max(8.0, rng.expovariate(1 / 128))
            entry = rng.choice(entries)
            self.at(arrivals, lambda s=spec, t=tokens, e=entry: self._arrive(e, s, t))
            arrivals += rng.expovariate(self.rate)
        for second in range(1, int(self.duration)):
            self.at(float(second), self._sample_queues)
        while self.events:
            when, _, action = heapq.heappop(self.events)
            self.now = when
            action()
        skip = len(self.ttfts) // 10  # the first tenth warms the swarm up
        warm = self.ttfts[skip:]
        by_model: dict[str, tuple[int, float]] = {}
        for model, ttft in zip(self.ttft_models[skip:], warm, strict=True):
            count, total = by_model.get(model, (0, 0.0))
            by_model[model] = (count + 1, total + ttft)
        queues = sorted(self.queue_samples)
        return RoutingResult(len(self.nodes), self.mode, len(self.ttfts),
                             statistics.fmean(warm), _quantile(warm, 0.95), self.loads,
                             statistics.fmean(queues), _quantile(queues, 0.95), queues[-1],
                             self.probes / len(self.ttfts), by_model)

    def _ranked(self, entry: str, spec: ModelSpec) -> tuple[list[Candidate], int]:
        """The candidates best first, and the probe rounds that took."""
        view = self._view(entry, spec, self.holders[spec.name], exact=self.oracle)
        if not self.probing:
            return rank(view, Policy.LEAST_LOADED, self.rng), 0
        current = [c for c in view if c.is_self]
        announced = [c for c in view if not c.is_self]
        rounds = 0
        while another_round(rounds, current):
            asked = [c.node_id for c in to_probe(announced, PROBES_PER_ROUND, self.rng)]
            if not asked:
                break
            rounds += 1
            self.probes += len(asked)
            announced = [c for c in announced if c.node_id not in asked]
            current += self._view(entry, spec, [self.nodes[node] for node in asked], exact=True)
        return rank_probed(current, announced, Policy.LEAST_LOADED, self.rng), rounds

    def _view(self, entry: str, spec: ModelSpec, nodes: list[SimNode], exact: bool) -> list[Candidate]:
        candidates = []
        for node in nodes:
            if exact or node.id == entry:  # a node knows its own figures
                loaded, loading, in_flight, queued = node.figures(spec.name)
                outstanding = 0
                hosted = node.models[spec.name]
                load_left = max(0.0, hosted.ready_at - self.now) if loading else None
            else:
                loaded, loading, in_flight, queued = node.announced[spec.name]
                key = (entry, node.id, spec.name)
                outstanding = self.outstanding[key]
                ready_at = self.loads_triggered.get(key)
                if loaded or (ready_at is not None and self.now > ready_at + 30):
                    self.loads_triggered.pop(key, None)
                    ready_at = None
                load_left = (max(0.0, ready_at - self.now) if ready_at is not None
                             else node.load_s(spec) / 2 if loading else None)
            candidates.append(Candidate(node.id, node.id, node.id == entry, loaded, node.slots, in_flight, queued,
                                        node.slots * node.tps_per_slot, outstanding, 128.0, node.load_s(spec),
                                        load_left, node.fits(spec.name)))
        return candidates

    def _arrive(self, entry: str, spec: ModelSpec, tokens: float) -> None:
        ranked, rounds = self._ranked(entry, spec)
        best = next((c for c in ranked if c.loaded or c.fits), None)
        if best is None:
            self.at(self.now + 1.0, lambda: self._arrive(entry, spec, tokens))  # no room anywhere: retry
            return
        key = (entry, best.node_id, spec.name)
        if not best.loaded and key not in self.loads_triggered:
            self.loads_triggered[key] = self.now + load_wait(best)
        self.outstanding[key] += 1
        hop = (0.0 if best.is_self else 0.002) + rounds * PROBE_RTT
        self.at(self.now + hop, lambda: self._start(self.nodes[best.node_id], spec, tokens, self.now, key))

    def _start(self, node: SimNode, spec: ModelSpec, tokens: float, arrived: float, key: tuple[str, str, str]) -> None:
        hosted = node.models[spec.name]
        hosted.last_used = self.now
        service = tokens / node.tps_per_slot

        def first_token() -> None:
            self.ttfts.append(self.now - arrived)
            self.ttft_models.append(spec.name)

        def done() -> None:
            self.outstanding[key] -= 1
            hosted.running -= 1
            if hosted.queue:
                self._serve(node, hosted, *hosted.queue.pop(0))
            self._changed(node)

        job: Job = (service, first_token, done)
        if not hosted.loaded and not hosted.loading:
            if not self._make_room(node, spec.name):
                self.at(self.now + 1.0, lambda: self._start(node, spec, tokens, arrived, key))
                return
            self.loads += 1
            hosted.ready_at = self.now + node.load_s(spec)
            self.at(hosted.ready_at, lambda: self._loaded(node, hosted))
        if hosted.loaded and hosted.running < node.slots:
            self._serve(node, hosted, *job)
        else:
            hosted.queue.append(job)
        self._changed(node)

    def _serve(self, node: SimNode, hosted: Hosted, service: float, first: Callable[[], None],
               done: Callable[[], None]) -> None:
        hosted.running += 1
        first()
        self.at(self.now + service, done)

    def _loaded(self, node: SimNode, hosted: Hosted) -> None:
        hosted.loaded, hosted.ready_at = True, 0.0
        while hosted.queue and hosted.running < node.slots:
            self._serve(node, hosted, *hosted.queue.pop(0))
        self._changed(node)

    def _make_room(self, node: SimNode, model: str) -> bool:
        resident = [(h.last_used, name) for name, h in node.models.items() if h.loaded or h.loading]
        if len(resident) < node.max_loaded:
            return True
        idle = sorted((used, name) for used, name in resident if not _busy(node.models[name]))
        if not idle:
            return False
        node.models[idle[0][1]].loaded = False
        return True

    def _changed(self, node: SimNode) -> None:
        """Announce now, or once the gap since the last announcement has passed (as GossipNode does)."""
        due = node.announced_at + self.gap
        if self.now >= due:
            self._announce(node)
        elif not node.pending:
            node.pending = True
            self.at(due, lambda: self._announce(node))

    def _announce(self, node: SimNode) -> None:
        node.pending = False
        node.announced = {name: node.figures(name) for name in node.models}
        node.announced_at = self.now

    def _sample_queues(self) -> None:
        self.queue_samples += [sum(len(h.queue) for h in node.models.values()) for node in self.nodes.values()]


def _sample_weighted(rng: random.Random, specs: list[ModelSpec], k: int) -> list[ModelSpec]:
    chosen: list[ModelSpec] = []
    while len(chosen) < min(k, len(specs)):
        pick = rng.choices(specs, [s.weight for s in specs])[0]
        if pick not in chosen:
            chosen.append(pick)
    return chosen


def _quantile(values: list[float] | list[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--duration", type=float, default=120.0, help="virtual seconds of routing workload")
    parser.add_argument("--plot", type=Path, help="write a PNG of the results here")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--by-model", type=int, default=0, metavar="K",
                        help="print the K models whose requests lose most time against the oracle, per mode")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    members, routes = [], []
    for n in sizes:
        member = simulate_membership(n, args.seed)
        members.append(member)
        print(f"N={n}: announcement {member.sealed_bytes} B, gap {member.announce_gap:.1f} s; "
              f"sent {member.sent_bytes_per_s / 1024:.1f} KB/s, "
              f"received {member.received_bytes_per_s / 1024:.1f} KB/s, {member.messages_per_s:.1f} msg/s per node "
              f"(full mesh: {member.full_mesh_bytes_per_s / 1024:.1f} KB/s); "
              f"join seen by all in {member.join_convergence_s:.2f} s; death seen by all in "
              f"{member.detection_max_s:.2f} s (median {member.detection_median_s:.2f}); "
              f"table {member.memory_per_node / 1024:.0f} KiB; {member.neighbours:.0f} neighbours; "
              f"{member.wall_s:.0f} s wall", flush=True)
        for mode in MODES:
            result = RoutingSim(n, member.announce_gap, args.seed, mode, args.duration).run()
            routes.append(result)
            oracle = routes[-1 - MODES.index(mode)].mean_ttft
            print(f"  {result.mode:7s} {result.requests} requests: TTFT mean {result.mean_ttft:.3f} s "
                  f"({result.mean_ttft / oracle:.2f} x oracle), p95 {result.p95_ttft:.3f} s, {result.loads} loads; "
                  f"queue mean {result.queue_mean:.2f}, p95 {result.queue_p95:.0f}, max {result.queue_max}; "
                  f"{result.probes:.1f} probes per request", flush=True)
            if args.by_model and mode != "oracle":
                _print_losses(result, routes[-1 - MODES.index(mode)], args.by_model)
    if args.plot:
        _plot(members, routes, args.plot)
    return 0


def _print_losses(result: RoutingResult, oracle: RoutingResult, k: int) -> None:
    """The ``k`` models whose requests took the most time to first token beyond the oracle's, summed."""
    def excess(model: str) -> float:
        return result.by_model.get(model, (0, 0.0))[1] - oracle.by_model.get(model, (0, 0.0))[1]

    total = sum(ttft for _, ttft in result.by_model.values()) - sum(ttft for _, ttft in oracle.by_model.values())
    for model in sorted(set(result.by_model) | set(oracle.by_model), key=excess, reverse=True)[:k]:
        count, ttft = result.by_model.get(model, (0, 0.0))
        oracle_count, oracle_ttft = oracle.by_model.get(model, (0, 0.0))
        print(f"    {model}: {count} requests, mean TTFT {ttft / max(count, 1):.3f} s "
              f"(oracle {oracle_ttft / max(oracle_count, 1):.3f} s); {excess(model):+.1f} s of the "
              f"{total:+.1f} s lost in all", flush=True)


def _plot(members: list[MembershipResult], routes: list[RoutingResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [m.n for m in members]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.loglog(sizes, [m.received_bytes_per_s / 1024 for m in members], "o-", label="gossip: received")
    left.loglog(sizes, [m.sent_bytes_per_s / 1024 for m in members], "s-", label="gossip: sent")
    left.loglog(sizes, [m.full_mesh_bytes_per_s / 1024 for m in members], "x--", label="full mesh (today)")
    left.axhline(10, color="grey", linestyle=":", label="target at N=1000")
    left.set_xlabel("nodes")
    left.set_ylabel("KB/s per node")
    left.legend()
    left.set_title("membership traffic per node")
    width = 0.25
    positions = range(len(sizes))
    oracle = [r.mean_ttft for r in routes if r.mode == "oracle"]
    for index, mode in enumerate(MODES[1:]):
        ratios = [r.mean_ttft / o for r, o in zip([r for r in routes if r.mode == mode], oracle, strict=True)]
        right.bar([p + (index - 1) * width for p in positions], ratios, width, label=mode)
    right.axhline(1.1, color="grey", linestyle=":", label="target (oracle + 10 %)")
    right.set_yscale("log")
    right.set_xticks(list(positions), [str(n) for n in sizes])
    right.set_xlabel("nodes")
    right.set_ylabel("mean time to first token / oracle's")
    right.legend()
    right.set_title("routing against an oracle")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
