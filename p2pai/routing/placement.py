"""Which node should answer a request for a model: pure functions over a snapshot.

Least-loaded ranks nodes by the expected time to the request's first token:
  the wait for a free slot (requests ahead of it x how long each holds a slot)
  + the load, where the model is not loaded yet (what is left of a load under
    way, else the node's own estimate of a load, from the file size and its
    measured load speed)
  + the network hop.
So a node that has the model on disk but not loaded takes requests once the
loaded nodes' queues would make them wait longer than it takes to load. A node
that cannot load the model (its estimate does not fit its free memory) comes
last. The announced figures are up to a second old, so requests this node has
sent and not yet seen finish (`outstanding`) count too, and so do the loads it
triggered (`load_left`): a burst does not stampede onto one node, loaded or not.

In a large swarm the announced figures are minutes old (the gossip bounds its
bytes by announcing less often), so the router asks a few candidates for their
current figures before sending (`to_probe`), round after round until one can
start the answer at once (`settled`) or PROBE_ROUNDS are done (`another_round`);
the candidates that answered are ranked first (`rank_probed`).
bench/simulate_swarm.py measured the choice (bench/README.md, "Swarm at scale"):
asking the four best by their stale figures was 1.3 and 5 times an oracle's mean
time to first token at 100 and 1,000 nodes; sampling the nodes said to have the
model loaded at random, in rounds of four of them and the two that would load the
model soonest, is 0.79-1.07 times the oracle's at 100 nodes (eight seeds, up to
two rounds or three), and at 1,000 nodes (three seeds) 1.15-1.40 with up to two
rounds, 1.04-1.10 with up to three.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import Enum

DEFAULT_TPS = 20.0  # assumed decode speed of a node that has not measured one yet
TYPICAL_ANSWER_TOKENS = 128  # assumed length of an answer where none was measured yet
DEFAULT_LOAD_S = 2.0  # assumed load time where a node announced none
PROBES_PER_ROUND = 6
PROBE_ROUNDS = 3
"""At 1,000 nodes a third round finds a holder that loads a mid-popular model soon when the holders
the first two asked were all busy: the old figures do not say which of the fast loaders loaded it since."""
LOADS_PER_ROUND = 2
"""Of each round, the nodes that would load the model soonest (the rest: nodes said to have it loaded)."""
HOP_S = 0.002
"""Forwarding to a peer (loopback or LAN): what makes this node win a tie."""


class Policy(str, Enum):
    LEAST_LOADED = "least-loaded"
    LOCAL_FIRST = "local-first"
    RANDOM = "random"


@dataclass(slots=True)
class Candidate:
    """A node's figures as one request sees them; built for every candidate of every request, hence
    not frozen (a frozen dataclass of this size takes 6 µs to build here, this one 0.6)."""

    node_id: str
    name: str
    is_self: bool
    loaded: bool
    slots: int
    in_flight: int
    queued: int
    decode_tps: float | None
    outstanding: int = 0
    """Requests for this model this node sent there and that have not finished."""
    answer_tokens: float | None = None
    """Tokens an answer takes there (recent average)."""
    load_s: float | None = None
    """Seconds a load of the model takes there."""
    load_left: float | None = None
    """Seconds left of a load under way there (this node triggered it, or the node announces it loading)."""
    fits: bool = True
    """False: the model is not loaded there and does not fit its free memory."""


def expected_wait(candidate: Candidate) -> float:
    """Seconds a new request would wait for a free slot, roughly (once the model is loaded)."""
    busy = max(candidate.in_flight + candidate.queued, candidate.outstanding)
    slots = max(candidate.slots, 1)
    ahead = max(0, busy + 1 - slots)
    tokens = candidate.answer_tokens or TYPICAL_ANSWER_TOKENS
    tps = candidate.decode_tps or DEFAULT_TPS  # aggregate over the slots: one slot frees every tokens/tps
    return ahead * tokens / tps


def load_wait(candidate: Candidate) -> float:
    """Seconds until the model is loaded there: 0 when it is."""
    if candidate.loaded:
        return 0.0
    if candidate.load_left is not None:
        return candidate.load_left
    return candidate.load_s if candidate.load_s is not None else DEFAULT_LOAD_S


def time_to_first_token(candidate: Candidate) -> float:
    """Expected seconds before a request sent there now starts its answer (inf: it cannot be loaded there)."""
    if not candidate.loaded and not candidate.fits:
        return math.inf
    return load_wait(candidate) + expected_wait(candidate) + (0.0 if candidate.is_self else HOP_S)


def rank(candidates: list[Candidate], policy: Policy, rng: random.Random) -> list[Candidate]:
    """All candidates, best first. Ties are broken at random so equal nodes share the load."""
    if len(candidates) < 2:  # the usual swarm of one node per model: nothing to order (nor to draw)
        return list(candidates)
    shuffled = list(candidates)
    rng.shuffle(shuffled)
    if policy is Policy.RANDOM:
        return shuffled
    ranked = sorted(shuffled, key=time_to_first_token)
    if policy is Policy.LOCAL_FIRST:
        ranked.sort(key=lambda c: not c.is_self)  # stable: the rest keep their least-loaded order
    return ranked


def settled(candidate: Candidate) -> bool:
    """It has the model loaded and a free slot: no node can start the answer sooner (but for the hop)."""
    return candidate.loaded and expected_wait(candidate) == 0


def another_round(rounds: int, current: list[Candidate]) -> bool:
    """Whether to ask one more round, after ``rounds`` rounds that gave the ``current`` figures:
    while no candidate can start the answer at once and fewer than PROBE_ROUNDS are done."""
    return rounds < PROBE_ROUNDS and not any(settled(c) for c in current)


def to_probe(candidates: list[Candidate], count: int, rng: random.Random) -> list[Candidate]:
    """Which ``count`` of ``candidates`` to ask for their current figures: up to count - LOADS_PER_ROUND
    at random among those said to have the model loaded, and the LOADS_PER_ROUND that would load it
    soonest (by old figures some of those have loaded it since, and may be busy already).

    Whether a node has a model loaded changes rarely; how busy it is changes all the time, so old
    announced queues say little and the loaded ones are sampled at random. This node is never
    asked: its own figures are current."""
    peers = [c for c in candidates if not c.is_self and time_to_first_token(c) < math.inf]
    loaded = rng.sample([c for c in peers if c.loaded], sum(c.loaded for c in peers))
    loading = sorted((c for c in peers if not c.loaded), key=time_to_first_token)
    first = count - LOADS_PER_ROUND
    return (loaded[:first] + loading[:LOADS_PER_ROUND] + loaded[first:] + loading[LOADS_PER_ROUND:])[:count]


def rank_probed(current: list[Candidate], announced: list[Candidate], policy: Policy,
                rng: random.Random) -> list[Candidate]:
    """Candidates whose figures are current (this node, those that answered a probe) best first,
    then the others by their announced figures: fallbacks, should the first ones fail."""
    return rank(current, policy, rng) + rank(announced, policy, rng)
