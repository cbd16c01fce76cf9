"""Where each layer of a model goes when it is spread over RPC workers.

A pure function mirroring llama.cpp's layer split (llama-model.cpp,
load_tensors): with `gpu_layers` = g, layers n_layer+1-g .. n_layer (the last
one being the output layer) go to the devices, cut by the cumulative
`tensor_split` fractions; the rest and the input embeddings stay local. We
always pass the split we computed to llama.cpp, so the explanation printed
before loading is what actually happens.

The output layer stays local too (a tensor override): llama.cpp would put it
on the last device first, and then every token's logits (vocabulary x 4
bytes: 1 MB for gemma-3) would cross the network instead of one hidden state
(n_embd x 4 bytes), and a model with tied embeddings would hold a second copy
of them on the worker.
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..base import ModelLoadError
from ..llama import LlamaSettings
from ..llama.memory import ModelLayout, gguf_layout

__all__ = ["Capacity", "ModelLayout", "Placement", "PlacementError", "gguf_layout", "place"]

LOCAL = "local"
OUTPUT_TENSORS = (r"^(output|output_norm|token_embd)\.",)
"""The output layer's tensors (a tied model's output is `token_embd`, already local for the input)."""
HEADROOM = 1.10
"""Weights and KV cache are estimates; ask for 10% more than they add up to."""


class PlacementError(ModelLoadError):
    """The model does not fit on the chosen workers, or the config asks for something impossible."""


@dataclass(frozen=True)
class Capacity:
    worker_id: str
    free_memory: int


@dataclass(frozen=True)
class Placement:
    workers: tuple[str, ...]
    tensor_split: tuple[float, ...]
    gpu_layers: int
    layers: dict[str, list[int]] = field(default_factory=dict)
    """Layer indices per worker id and LOCAL; index n_layer is the output layer."""
    bytes: dict[str, int] = field(default_factory=dict)
    """Expected memory per worker id and LOCAL."""

    def configure(self, settings: LlamaSettings) -> LlamaSettings:
        """`settings` for llama.cpp to load the model exactly as placed."""
        return dataclasses.replace(
            settings,
            gpu_layers=self.gpu_layers,
            tensor_split=self.tensor_split,
            cpu_tensors=OUTPUT_TENSORS if self.workers else (),
        )

    def explain(self, names: dict[str, str] | None = None) -> str:
        names = names or {}
        output = max(index for layers in self.layers.values() for index in layers)
        parts = [
            f"{names.get(where, where)}: {_describe(layers, output)}, ~{self.bytes[where] / 2**20:.0f} MiB"
            for where, layers in self.layers.items()
            if layers or where == LOCAL
        ]
        return "; ".join(parts)


def place(
    layout: ModelLayout,
    workers: list[Capacity],
    context_tokens: int,
    outputs: int,
    gpu_layers: int | None = None,
    tensor_split: list[float] | None = None,
    local_free: int | None = None,
) -> Placement:
    """Split `layout` over `workers` (in device order); raise PlacementError if it cannot fit.

    gpu_layers: how many of the n_layer repeating layers go to workers, the last
    ones (default all); tensor_split: relative shares per worker (default: by
    advertised free memory); local_free: this node's available memory, if it is to be checked.
    context_tokens: KV cells over all slots; outputs: rows of logits per step (one per slot).
    """
    n = layout.n_layer
    if gpu_layers is not None and gpu_layers < 0:
        raise PlacementError("gpu_layers must not be negative")
    if tensor_split is not None:
        if len(tensor_split) != len(workers):
            raise PlacementError(f"tensor_split has {len(tensor_split)} entries for {len(workers)} workers")
        if any(share < 0 for share in tensor_split) or sum(tensor_split) <= 0:
            raise PlacementError("tensor_split needs non-negative shares with a positive sum")
        shares = list(tensor_split)
    else:
        shares = [float(worker.free_memory) for worker in workers]
        if workers and sum(shares) <= 0:
            raise PlacementError("the workers advertise no free memory")
    on_workers = 0 if not workers else n if gpu_layers is None else min(gpu_layers, n)
    split: tuple[float, ...] = ()
    offloaded = 0
    devices: list[int] = []
    if on_workers:
        counts = [0] * len(workers)
        for device in _cut(shares, on_workers):
            counts[device] += 1
        # llama.cpp counts the output layer as the last offloaded one: one more slot on the
        # last device, which the override then keeps local.
        split, offloaded = _split_at(counts), on_workers + 1
        devices = _cut(split, offloaded)

    layers: dict[str, list[int]] = {LOCAL: [], **{worker.worker_id: [] for worker in workers}}
    first = n + 1 - offloaded
    for index in range(n + 1):
        where = LOCAL if index < first or index == n else workers[devices[index - first]].worker_id
        layers[where].append(index)

    kv = layout.kv_bytes_per_token_layer * context_tokens
    logits = layout.vocab_size * outputs * 4 * 2  # llama.cpp's output buffer and the matmul's result

    def need(indices: list[int]) -> int:
        total = 0
        for index in indices:
            total += layout.output_bytes + logits if index == n else layout.layer_bytes[index] + kv
        return int(total * HEADROOM)

    sizes = {where: need(indices) for where, indices in layers.items()}
    sizes[LOCAL] += layout.input_bytes
    for worker in workers:
        if sizes[worker.worker_id] > worker.free_memory:
            raise PlacementError(
                f"the model does not fit: worker {worker.worker_id} would need "
                f"~{sizes[worker.worker_id] / 2**20:.0f} MiB for {_describe(layers[worker.worker_id], n)} "
                f"but advertises {worker.free_memory / 2**20:.0f} MiB free"
            )
    if local_free is not None and sizes[LOCAL] > local_free:
        raise PlacementError(
            f"the model does not fit: this node would need ~{sizes[LOCAL] / 2**20:.0f} MiB for the embeddings "
            f"and {_describe(layers[LOCAL], n)} but has {local_free / 2**20:.0f} MiB available"
        )
    return Placement(tuple(worker.worker_id for worker in workers), split, offloaded, layers, sizes)


def _cut(shares: list[float] | tuple[float, ...], slots: int) -> list[int]:
    """The device of each of `slots` offloaded layers, computed as llama.cpp does (float32)."""
    cumulative = (np.cumsum(np.array(shares, dtype=np.float32)) / np.float32(sum(shares))).tolist()
    last = len(shares) - 1
    return [min(bisect.bisect_right(cumulative, float(np.float32(i) / np.float32(slots))), last) for i in range(slots)]


def _split_at(counts: list[int]) -> tuple[float, ...]:
    """Shares that make llama.cpp give device i `counts[i]` layers, then the output slot to the last.

    Each cut sits half a layer before its boundary, so float rounding cannot move a layer.
    """
    total = sum(counts) + 1
    cuts = [max(float(boundary) - 0.5, 0.0) for boundary in np.cumsum(counts[:-1]).tolist()] + [float(total)]
    return tuple((cut - previous) / total for cut, previous in zip(cuts, [0.0, *cuts[:-1]], strict=True))


def _describe(indices: list[int], output: int) -> str:
    """"layers 0-7 (8) + output": the repeating layers among `indices`, and whether the output layer is."""
    blocks = [index for index in indices if index != output]
    text = f"layers {blocks[0]}-{blocks[-1]} ({len(blocks)})" if blocks else "no layers"
    return text + " + output" if output in indices else text
