"""Routing choices as pure functions, driven by JSON fixtures of swarms."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from p2pai.routing.placement import Candidate, Policy, another_round, rank, rank_probed, settled, to_probe
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


PROBES = json.loads((Path(__file__).parent / "fixtures" / "probe.json").read_text())


@pytest.mark.parametrize("case", PROBES, ids=[c["case"] for c in PROBES])
def test_probe_fixtures(case: dict) -> None:
    """Which candidates a round asks for their current figures (routing.placement.to_probe)."""
    seen: Counter[str] = Counter()
    for seed in range(50):
        asked = [c.node_id for c in to_probe(candidates(case["nodes"]), case["count"], random.Random(seed))]
        assert len(asked) == len(set(asked)) == case["expect_size"]
        assert set(case.get("expect_always", ())) <= set(asked)
        assert not set(case.get("expect_never", ())) & set(asked)
        seen.update(asked)
    assert set(case.get("expect_sometimes", ())) <= set(seen)  # the loaded ones are sampled, not ranked


ROUNDS = json.loads((Path(__file__).parent / "fixtures" / "probe_rounds.json").read_text())


@pytest.mark.parametrize("case", ROUNDS, ids=[c["case"] for c in ROUNDS])
def test_probe_round_fixtures(case: dict) -> None:
    """Whether the router asks another round (routing.placement.another_round)."""
    assert another_round(case["rounds"], candidates(case["current"])) is case["expect_another"]


def test_settled_means_loaded_with_a_free_slot() -> None:
    free = Candidate("a", "a", False, True, 2, 1, 0, 40.0)
    assert settled(free)
    assert not settled(Candidate("b", "b", False, True, 2, 2, 0, 40.0))  # every slot taken
    assert not settled(Candidate("c", "c", False, True, 2, 0, 0, 40.0, outstanding=2))  # taken by our own requests
    assert not settled(Candidate("d", "d", False, False, 2, 0, 0, 40.0, load_s=0.1))  # a load first


def test_candidates_with_current_figures_come_before_announced_ones_that_look_better() -> None:
    answered = Candidate("answered", "answered", False, True, 1, 1, 2, 40.0)
    stale = Candidate("stale", "stale", False, True, 4, 0, 0, 40.0)  # idle, as of minutes ago
    ranked = rank_probed([answered], [stale], Policy.LEAST_LOADED, random.Random(1))
    assert [c.node_id for c in ranked] == ["answered", "stale"]


EVICTIONS = json.loads((Path(__file__).parent / "fixtures" / "eviction.json").read_text())


@pytest.mark.parametrize("case", EVICTIONS, ids=[c["case"] for c in EVICTIONS])
def test_eviction_fixtures(case: dict) -> None:
    residents = [Resident(**r) for r in case["residents"]]
    plan = plan_load(case["need"], case["free"], residents, case["max_loaded"], case["budget"])
    assert (plan.fits, list(plan.evict)) == (case["fits"], case["evict"])
    assert plan.fits or plan.reason
