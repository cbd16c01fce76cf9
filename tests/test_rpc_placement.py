"""Placement over RPC workers: a pure function, checked on table cases and on real GGUF headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pai.backends.llama.memory import ModelLayout, gguf_layout
from p2pai.backends.rpc.placement import (
    LOCAL,
    Capacity,
    PlacementError,
    _cut,
    _split_at,
    place,
)
from p2pai.backends.rpc.workers import WorkerInfo, select_workers
from p2pai.overlay import Member
from p2pai.swarm.view import SwarmNode

MiB = 2**20
# 8 layers of 10 MiB, 20 MiB output, 20 MiB embeddings, tiny KV and vocabulary.
LAYOUT = ModelLayout(layer_bytes=(10 * MiB,) * 8, output_bytes=20 * MiB, input_bytes=20 * MiB,
                     kv_bytes_per_token_layer=0, vocab_size=0)

CASES = [
    # Index 8 is the output layer: it stays local.
    {"id": "all-on-one", "workers": {"a": 1000}, "expect": {"a": list(range(8)), LOCAL: [8]}},
    {"id": "even-memory-halves", "workers": {"a": 500, "b": 500},
     "expect": {"a": [0, 1, 2, 3], "b": [4, 5, 6, 7], LOCAL: [8]}},
    {"id": "memory-weighted", "workers": {"a": 300, "b": 900},
     "expect": {"a": [0, 1], "b": [2, 3, 4, 5, 6, 7], LOCAL: [8]}},
    {"id": "tensor-split-honoured", "workers": {"a": 1000, "b": 1000}, "tensor_split": [1, 2],
     "expect": {"a": [0, 1, 2], "b": [3, 4, 5, 6, 7], LOCAL: [8]}},
    {"id": "tensor-split-zero-share", "workers": {"a": 1000, "b": 1000}, "tensor_split": [0, 1],
     "expect": {"a": [], "b": list(range(8)), LOCAL: [8]}},
    {"id": "gpu-layers-keeps-first-layers-local", "workers": {"a": 1000}, "gpu_layers": 3,
     "expect": {"a": [5, 6, 7], LOCAL: [0, 1, 2, 3, 4, 8]}},
    {"id": "no-workers-all-local", "workers": {}, "expect": {LOCAL: list(range(9))}},
]


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_layers_go_where_llama_cpp_puts_them(case: dict) -> None:
    workers = [Capacity(name, mib * MiB) for name, mib in case["workers"].items()]
    placement = place(LAYOUT, workers, context_size=512, slots=1,
                      gpu_layers=case.get("gpu_layers"), tensor_split=case.get("tensor_split"))
    assert placement.layers == case["expect"]
    assert abs(sum(placement.tensor_split) - 1) < 1e-6 or not workers
    assert placement.bytes[LOCAL] >= LAYOUT.input_bytes
    for worker in workers:
        assert placement.bytes[worker.id] <= worker.free_memory


@pytest.mark.parametrize("counts", [[1], [80], [3, 0, 5], [0, 7], [7, 0], [1, 1, 1, 1], [40, 41, 39], [0, 0, 1]])
def test_the_split_passed_to_llama_cpp_lands_each_layer_where_counted(counts: list[int]) -> None:
    devices = _cut(_split_at(counts), sum(counts) + 1)
    expected = [device for device, count in enumerate(counts) for _ in range(count)] + [len(counts) - 1]
    assert devices == expected


def test_expected_memory_counts_weights_output_and_headroom() -> None:
    placement = place(LAYOUT, [Capacity("a", 1000 * MiB)], context_size=512, slots=1)
    assert placement.bytes["a"] == int(8 * 10 * MiB * 1.10)
    assert placement.bytes[LOCAL] == int(20 * MiB * 1.10) + 20 * MiB  # output layer + input embeddings
    assert placement.explain({"a": "w1"}) == (
        "this node (CPU): no layers + output, ~42 MiB; w1 (CPU worker): layers 0-7 (8), ~88 MiB; "
        "predicted decode ~87 tok/s (rough)")


def test_a_model_that_does_not_fit_is_refused_with_the_numbers() -> None:
    with pytest.raises(PlacementError, match=r"does not fit: worker b would need ~\d+ MiB .* advertises 10 MiB free"):
        place(LAYOUT, [Capacity("a", 1000 * MiB), Capacity("b", 10 * MiB)], 512, 1, tensor_split=[1, 1])


def test_a_node_without_memory_for_its_part_is_refused_with_the_numbers() -> None:
    place(LAYOUT, [Capacity("a", 1000 * MiB)], 512, 1, local_free=43 * MiB)  # output + embeddings fit
    refusal = r"this node would need ~42 MiB for the embeddings and no layers \+ output but has 30 MiB"
    with pytest.raises(PlacementError, match=refusal):
        place(LAYOUT, [Capacity("a", 1000 * MiB)], 512, 1, local_free=30 * MiB)


@pytest.mark.parametrize("split, message", [([1], "tensor_split has 1 entries for 2 devices"),
                                            ([0, 0], "positive sum"), ([-1, 2], "non-negative")])
def test_impossible_tensor_split_is_refused(split: list[float], message: str) -> None:
    with pytest.raises(PlacementError, match=message):
        place(LAYOUT, [Capacity("a", MiB), Capacity("b", MiB)], 512, 1, tensor_split=split)


def test_kv_cache_logits_and_compute_buffers_are_counted() -> None:
    layout = ModelLayout((MiB,), output_bytes=MiB, input_bytes=MiB, kv_bytes_per_token_layer=1024, vocab_size=1000)
    placement = place(layout, [Capacity("a", 10**9)], context_size=256, slots=4)
    assert placement.bytes["a"] == int((MiB + 1024 * 1024) * 1.10)
    # the output layer's compute buffer holds a whole batch's logits (256 tokens), the output buffer a row per slot
    assert placement.bytes[LOCAL] == int((MiB + 256 * 1000 * 4) * 1.10) + MiB + 4 * 1000 * 4


def test_layout_of_a_real_gguf(tiny_path: Path) -> None:
    layout = gguf_layout(str(tiny_path))
    assert layout.n_layer == 2 and all(size > 0 for size in layout.layer_bytes)
    assert layout.vocab_size > 100 and layout.kv_bytes_per_token_layer > 0
    assert layout.output_bytes > 0 and layout.input_bytes > 0


def _Member(peer_id: str, payload: dict, roles: tuple[str, ...] = ("llama-cpp-worker",)) -> Member:
    return Member(peer_id, f"n-{peer_id}", "1", list(roles), [], payload, 0.0, True, True)


GOOD = {"rpc": {"port": 5000, "hosts": ["10.0.0.2"]}, "free_memory": 123, "total_memory": 456, "threads": 4,
        "protocol": "7.0.0", "in_use_by": None, "cache": False}


def test_worker_payloads_are_parsed_defensively() -> None:
    members = [
        _Member("good", {"worker": GOOD}),
        _Member("not-a-worker", {"worker": GOOD}, roles=("node",)),
        _Member("no-payload", {}),
        _Member("bad-port", {"worker": {**GOOD, "rpc": {"port": 70000, "hosts": ["x"]}}}),
        _Member("bad-hosts", {"worker": {**GOOD, "rpc": {"port": 1, "hosts": [1]}}}),
        _Member("bad-memory", {"worker": {**GOOD, "free_memory": "lots"}}),
        _Member("junk", {"worker": [1, 2]}),
    ]
    parsed = [info for m in members if (info := SwarmNode.from_member(m).worker_info()) is not None]
    assert parsed == [WorkerInfo("good", "n-good", ("10.0.0.2",), 5000, 123, "7.0.0", None, True)]


def test_selection_skips_offline_leased_and_incompatible_workers() -> None:
    def info(name: str, **changes: object) -> WorkerInfo:
        fields = {"peer_id": f"id-{name}", "name": name, "hosts": ("h",), "port": 1, "free_memory": 1,
                  "protocol": "7.0.0", **changes}
        return WorkerInfo(**fields)  # type: ignore[arg-type]

    workers = [info("b"), info("a"), info("off", online=False), info("mine", in_use_by="me"),
               info("theirs", in_use_by="other"), info("old", protocol="6.0.0")]
    assert [w.name for w in select_workers("auto", workers, "me", "7.0.0")] == ["a", "b", "mine"]
    assert [w.name for w in select_workers(["b", "id-a", "off", "missing"], workers, "me", "7.0.0")] == ["b", "a"]
