"""Bounded-cost membership (overlay/gossip.py), on the in-memory network of bench/simulate_swarm.py."""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from p2pai.identity import Identity
from p2pai.overlay.gossip import VERDICT, GossipNode
from simulate_swarm import KEYS, Network, RoutingSim, simulate_membership


def test_simulation_at_50_nodes() -> None:
    """The issue's targets, on a virtual clock (deterministic for a seed): bounded traffic, a join
    seen by all within 10 s, a death within 3 s."""
    result = simulate_membership(50, seed=3, steady=20.0)
    assert result.received_bytes_per_s < 10 * 1024 and result.sent_bytes_per_s < 10 * 1024
    assert result.received_bytes_per_s < result.full_mesh_bytes_per_s / 3
    assert result.join_convergence_s <= 10.0
    assert result.detection_max_s <= 3.0
    oracle = RoutingSim(50, result.announce_gap, 3, "oracle", duration=40.0).run()
    ours = RoutingSim(50, result.announce_gap, 3, "gossip", duration=40.0).run()
    probed = RoutingSim(50, result.announce_gap, 3, "probe", duration=40.0).run()
    assert ours.requests == probed.requests == oracle.requests > 100  # every request was answered
    assert probed.probes > 0 and probed.mean_ttft < ours.mean_ttft  # asking beats trusting stale figures


def _swarm(n: int) -> tuple[Network, list[GossipNode]]:
    network = Network(random.Random(1))
    nodes = [GossipNode(Identity.generate(), KEYS, f"n{i}", {"i": i}, 0.0, random.Random(i)) for i in range(n)]
    for node in nodes:
        network.add(node)
    for node in nodes[1:]:
        network.send(node.id, node.join(nodes[0].id))
    network.run_until(3.0)
    return network, nodes


def test_a_wrongly_accused_node_announces_again_and_is_back_online() -> None:
    network, nodes = _swarm(5)
    assert all(len(node.online()) == 4 for node in nodes)
    accused = nodes[4]
    liar = nodes[1]
    seq = liar.peers[accused.id].announcement.seq
    verdict = bytes([VERDICT]) + seq.to_bytes(8, "big") + accused.id.encode()
    network.send(liar.id, [(node.id, verdict) for node in nodes if node is not liar])
    network.run_until(network.now + 0.5)
    assert all(node.peers[accused.id].online for node in nodes if node is not accused)
    assert liar.peers[accused.id].announcement.seq > seq  # it refuted with a newer announcement


def test_a_frozen_node_is_judged_offline_and_comes_back_when_it_resumes() -> None:
    network, nodes = _swarm(20)  # more than SMALL_SWARM: ring watchers and rumours
    frozen = nodes[7]
    network.down.add(frozen.id)
    frozen_at = network.now
    network.run_until(frozen_at + 3.0)
    assert all(not node.peers[frozen.id].online for node in nodes if node is not frozen)
    network.down.discard(frozen.id)
    network._tick(frozen, network.now)  # its clock goes on where it stopped
    network.run_until(network.now + 4.0)
    assert all(node.peers[frozen.id].online for node in nodes if node is not frozen)


def test_malformed_messages_from_a_member_are_dropped_without_raising() -> None:
    node = GossipNode(Identity.generate(), KEYS, "n", {}, 0.0, random.Random(0))
    other = GossipNode(Identity.generate(), KEYS, "o", {}, 0.0, random.Random(1))
    for kind in b"hpkavdwjs":
        for body in (b"", b"\x00", b"\xff" * 7, b"\x00" * 9, b"\xff" * 40):
            node.receive(other.id, bytes([kind]) + body, 1.0)
    node.receive(other.id, b"", 1.0)
    assert node.peers == {} and node.counters.rejected > 0


def test_an_announcement_older_than_two_gaps_is_refused() -> None:
    """Replays are refused by sequence number; age bounds what a stranger to the swarm can be told."""
    author = GossipNode(Identity.generate(), KEYS, "a", {}, 0.0, random.Random(0))
    node = GossipNode(Identity.generate(), KEYS, "n", {}, 0.0, random.Random(1))
    node.receive(author.id, b"a" + author._sealed, 2 * node.announce_gap() + 31.0)
    assert author.id not in node.peers and node.counters.rejected == 1
    node.receive(author.id, b"a" + author._sealed, 1.0)
    assert author.id in node.peers
