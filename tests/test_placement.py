"""Routing choices as pure functions, driven by JSON fixtures of swarms; and the peer signature rules."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from p2pai.routing.peer_auth import NONCE, Rejected, Verifier, sign
from p2pai.routing.placement import Candidate, Policy, rank

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


KEY = bytes(range(32))
BODY = b'{"model": "m"}'


def test_a_signed_request_verifies_once() -> None:
    verifier = Verifier(KEY)
    headers = sign(KEY, "peer-a", "POST", "/v1/completions", BODY, now=1000.0)
    assert verifier.verify(headers, "POST", "/v1/completions", BODY, now=1001.0) == "peer-a"
    with pytest.raises(Rejected, match="replayed"):
        verifier.verify(headers, "POST", "/v1/completions", BODY, now=1001.0)


@pytest.mark.parametrize(
    "change",
    [
        {"method": "GET"},
        {"path": "/v1/embeddings"},
        {"body": BODY + b" "},
        {"now": 1000.0 + 31},
        {"now": 1000.0 - 31},
        {"key": bytes(32)},
        {"peer": "peer-b"},
    ],
)
def test_any_change_is_refused(change: dict) -> None:
    signed = sign(change.get("key", KEY), "peer-a", "POST", "/v1/completions", BODY, now=1000.0)
    if "peer" in change:
        signed = {**signed, "X-P2PAI-Peer": change["peer"]}
    with pytest.raises(Rejected):
        Verifier(KEY).verify(signed, change.get("method", "POST"), change.get("path", "/v1/completions"),
                             change.get("body", BODY), now=change.get("now", 1000.0))


def test_the_replay_window_is_bounded_in_memory() -> None:
    verifier = Verifier(KEY, max_nonces=10)
    for i in range(10):
        verifier.verify(sign(KEY, "p", "POST", "/", b"", now=1000.0 + i), "POST", "/", b"", now=1000.0 + i)
    with pytest.raises(Rejected, match="too many"):
        verifier.verify(sign(KEY, "p", "POST", "/", b"", now=1010.0), "POST", "/", b"", now=1010.0)
    # Once the first ones are older than twice the skew they are forgotten (refused by time anyway).
    later = sign(KEY, "p", "POST", "/", b"", now=1075.0)
    assert verifier.verify(later, "POST", "/", b"", now=1075.0) == "p"
    assert later[NONCE]
