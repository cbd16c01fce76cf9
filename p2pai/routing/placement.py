"""Which node should answer a request for a model: pure functions over a snapshot.

Order of preference (least-loaded): a node where the model is already loaded
(a load costs seconds), then the lowest expected wait, then this node itself
(no network hop). The announced figures are up to a second old, so requests
this node has sent and not yet seen finish (`outstanding`) count too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

DEFAULT_TPS = 20.0  # assumed decode speed of a node that has not measured one yet
TYPICAL_ANSWER_TOKENS = 128


class Policy(str, Enum):
    LEAST_LOADED = "least-loaded"
    LOCAL_FIRST = "local-first"
    RANDOM = "random"


@dataclass(frozen=True)
class Candidate:
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


def expected_wait(candidate: Candidate) -> float:
    """Seconds a new request would wait for a free slot, roughly."""
    busy = max(candidate.in_flight + candidate.queued, candidate.outstanding)
    waiting_for_slot = max(0, busy + 1 - max(candidate.slots, 1))
    tps = candidate.decode_tps or DEFAULT_TPS
    return waiting_for_slot * TYPICAL_ANSWER_TOKENS / tps


def rank(candidates: list[Candidate], policy: Policy, rng: random.Random) -> list[Candidate]:
    """All candidates, best first. Ties are broken at random so equal nodes share the load."""
    shuffled = list(candidates)
    rng.shuffle(shuffled)
    if policy is Policy.RANDOM:
        return shuffled
    ranked = sorted(shuffled, key=lambda c: (not c.loaded, expected_wait(c), not c.is_self))
    if policy is Policy.LOCAL_FIRST:
        ranked.sort(key=lambda c: not c.is_self)  # stable: the rest keep their least-loaded order
    return ranked
