"""Routing choices as pure functions, driven by JSON fixtures of swarms."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from p2pai.routing.placement import Candidate, Policy, rank
from p2pai.serving.residency import Resident, plan_load

CASES = json.loads((Path(__file__).parent / "fixtures" / "placement.json").read_text())


def candidates(nodes: list[dict]) -> list[Candidate]:
    return [Candidate(name=node["node_id"], **node) for node in nodes]


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_placement_fixtures(case: dict) -> None:
    for seed in range(20):  # the random tie-break never changes a clear choice
        ranked = rank(candidates(case["nodes"]), Policy(case["policy"]), random.Random(seed))
        assert ranked[0].node_id == case["expect_first"]
        if "expect_order" in case:
            assert [c.node_id for c in ranked] == case["expect_order"]


def test_equal_nodes_share_the_load_and_random_uses_everyone() -> None:
    equal = [Candidate(n, n, False, True, 1, 0, 0, 40.0) for n in "abc"]
    for policy in (Policy.LEAST_LOADED, Policy.RANDOM):
        rng = random.Random(1)
        firsts = Counter(rank(equal, policy, rng)[0].node_id for _ in range(300))
        assert set(firsts) == {"a", "b", "c"} and min(firsts.values()) > 60


EVICTIONS = json.loads((Path(__file__).parent / "fixtures" / "eviction.json").read_text())


@pytest.mark.parametrize("case", EVICTIONS, ids=[c["case"] for c in EVICTIONS])
def test_eviction_fixtures(case: dict) -> None:
    residents = [Resident(**r) for r in case["residents"]]
    plan = plan_load(case["need"], case["free"], residents, case["max_loaded"], case["budget"])
    assert (plan.fits, list(plan.evict)) == (case["fits"], case["evict"])
    assert plan.fits or plan.reason
