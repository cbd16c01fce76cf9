"""Bounded-cost membership (overlay/gossip.py), on the in-memory network of bench/simulate_swarm.py."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from p2pai.identity import Identity
from p2pai.overlay.gossip import HEARTBEAT, RUMOUR, SMALL_SWARM, VERDICT, GossipNode
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


def _swarm(n: int, small_swarm: int = SMALL_SWARM) -> tuple[Network, list[GossipNode]]:
    network = Network(random.Random(1))
    nodes = [GossipNode(Identity.generate(), KEYS, f"n{i}", {"i": i}, 0.0, random.Random(i), small_swarm=small_swarm)
             for i in range(n)]
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
    assert node.peers == {} and node.counters.rejected.total() > 0


def test_an_announcement_older_than_two_gaps_is_refused() -> None:
    """Replays are refused by sequence number; age bounds what a stranger to the swarm can be told."""
    author = GossipNode(Identity.generate(), KEYS, "a", {}, 0.0, random.Random(0))
    node = GossipNode(Identity.generate(), KEYS, "n", {}, 0.0, random.Random(1))
    node.receive(author.id, b"a" + author._sealed, 2 * node.announce_gap() + 31.0)
    assert author.id not in node.peers and node.counters.rejected == {"stale": 1}
    node.receive(author.id, b"a" + author._sealed, 1.0)
    assert author.id in node.peers


def _forged(author: str, signer: Identity, payload: dict) -> bytes:
    """An announcement claiming ``author``'s peer id, signed by ``signer``: what a relaying member could send."""
    aad = b"p2pai/announce/1\x00" + KEYS.discriminator.encode()
    body = json.dumps({"id": author, "name": "x", "version": "x", "roles": [], "addrs": [], "seq": 2**62,
                       "ts": 1.0, "payload": payload}).encode()
    nonce = os.urandom(12)
    return nonce + ChaCha20Poly1305(KEYS.seal_key).encrypt(nonce, signer.public_key + signer.sign(aad + body) + body,
                                                           aad)


def test_relayed_announcements_count_only_with_their_authors_signature_and_replays_are_ignored() -> None:
    alice = GossipNode(Identity.generate(), KEYS, "alice", {"v": 1}, 0.0, random.Random(0))
    node = GossipNode(Identity.generate(), KEYS, "n", {}, 0.0, random.Random(1))
    relay = Identity.generate()
    first = alice._sealed
    node.receive(relay.peer_id, bytes([RUMOUR]) + first, 1.0)  # relayed by another member: it is Alice's own
    assert node.peers[alice.id].announcement.payload == {"v": 1}
    alice.set_payload({"v": 2}, 1.0)
    node.receive(alice.id, bytes([RUMOUR]) + alice._sealed, 1.1)
    node.receive(relay.peer_id, bytes([RUMOUR]) + first, 1.2)  # a replay of the older one
    node.receive(relay.peer_id, bytes([RUMOUR]) + _forged(alice.id, relay, {"v": 666}), 1.3)
    assert node.peers[alice.id].announcement.payload == {"v": 2}
    assert node.counters.accepted == 2 and node.counters.rejected == {"bad_signature": 1}


def test_the_member_table_is_bounded_and_an_offline_member_makes_room() -> None:
    node = GossipNode(Identity.generate(), KEYS, "n", {}, 0.0, random.Random(0), max_members=1)
    a, b = (GossipNode(Identity.generate(), KEYS, name, {}, 0.0, random.Random(1)) for name in "ab")
    node.receive(a.id, bytes([RUMOUR]) + a._sealed, 1.0)
    node.receive(b.id, bytes([RUMOUR]) + b._sealed, 1.0)
    assert list(node.peers) == [a.id] and node.counters.rejected == {"too_many_members": 1}
    node.tick(4.0)  # no heartbeat from A: pinged...
    node.tick(4.6)  # ...no answer: offline
    assert not node.peers[a.id].online
    node.receive(b.id, bytes([RUMOUR]) + b._sealed, 5.0)
    assert list(node.peers) == [b.id]


def test_an_unchanged_announcement_is_sealed_again_so_late_joiners_accept_it() -> None:
    """Members hand a joining node the announcements they have; one sealed long ago would be stale."""
    network, nodes = _swarm(3)
    network.run_until(100.0)  # nobody's payload changed
    late = GossipNode(Identity.generate(), KEYS, "late", {}, network.now, random.Random(9))
    network.add(late)
    network.send(late.id, late.join(nodes[0].id))
    network.run_until(network.now + 0.5)
    assert sorted(late.online()) == sorted(node.id for node in nodes)
    assert late.counters.rejected.total() == 0


def test_with_a_lowered_threshold_a_few_nodes_run_the_large_swarm_protocol() -> None:
    """Fewer members than WATCHERS: each heartbeats every other once, never itself."""
    network, nodes = _swarm(5, small_swarm=2)
    assert all(len(node.online()) == 4 and not node.small() for node in nodes)
    for node in nodes:
        beats = [peer for peer, message in node.tick(network.now + 1.0) if message[0] == HEARTBEAT]
        assert sorted(beats) == sorted(other.id for other in nodes if other is not node)
