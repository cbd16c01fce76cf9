"""Where each layer of a model goes: this node's GPUs, the swarm's RPC workers, this node's CPU.

A pure function mirroring llama.cpp's layer split (llama-model.cpp,
load_tensors): with `gpu_layers` = g, layers n_layer+1-g .. n_layer (the last
one being the output layer) go to the devices, cut by the cumulative
`tensor_split` fractions; the rest and the input embeddings stay on this
node's CPU. llama.cpp orders its devices RPC workers first, then local GPUs.
We always pass the split we computed to llama.cpp, so the explanation printed
before loading is what actually happens.

Without `gpu_layers` and `tensor_split`, layers fill GPU memory first (local
and workers' GPUs, shared by free memory), then CPU workers, and the rest stays
on this node's CPU; each device takes only as many layers as fit beside its KV
cache and compute buffer (memory.py estimates them from the GGUF).

The output layer runs on this node: on its last GPU when the whole model fits
there, else on its CPU (a tensor override). On a worker every token's logits
(vocabulary x 4 bytes: 1 MB for gemma-3) would cross the network instead of
one hidden state (n_embd x 4 bytes), and a model with tied embeddings would
hold a second copy of them on the worker.
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..base import ModelLoadError
from ..llama import LlamaSettings
from ..llama.memory import F32, HEADROOM, ModelLayout

LOCAL = "local"
OUTPUT_TENSORS = (r"^(output|output_norm|token_embd)\.",)
"""The output layer's tensors (a tied model's output is `token_embd`, already local for the input)."""
CPU_BYTES_PER_S = 10e9
"""Decode reads every weight once per token: gemma-3-270m (253 MB) runs at ~40 tok/s on this 2-core CPU."""
GPU_BYTES_PER_S = 200e9
"""A modest discrete GPU's effective memory bandwidth (a consumer card has 250-1000 GB/s)."""
HOP_S = 0.001
"""Per RPC worker per token: a LAN round trip and llama.cpp's RPC calls (~1 ms measured on loopback)."""


class PlacementError(ModelLoadError):
    """The model does not fit on the chosen devices, or the config asks for something impossible."""


@dataclass(frozen=True)
class Capacity:
    """A device layers can go to."""

    id: str
    """A worker's peer id, or a local GPU's ggml name (CUDA0...)."""
    free_memory: int
    gpu: bool = False
    local: bool = False
    """A GPU of this node (llama.cpp puts them after the RPC workers)."""

    def label(self, names: dict[str, str]) -> str:
        kind = "GPU" if self.gpu else "CPU"
        return f"GPU {names.get(self.id, self.id)}" if self.local else f"{names.get(self.id, self.id)} ({kind} worker)"


@dataclass(frozen=True)
class Placement:
    devices: tuple[Capacity, ...]
    """In llama.cpp's device order."""
    tensor_split: tuple[float, ...]
    gpu_layers: int
    layers: dict[str, list[int]] = field(default_factory=dict)
    """Layer indices per device id and LOCAL; index n_layer is the output layer."""
    bytes: dict[str, int] = field(default_factory=dict)
    """Expected memory per device id and LOCAL."""
    output_override: bool = False
    """The output layer is kept on the CPU by a tensor override."""
    seconds_per_token: float = 0.0
    """Predicted decode time of one token (see predict)."""

    @property
    def workers(self) -> tuple[str, ...]:
        return tuple(device.id for device in self.devices if not device.local)

    @property
    def predicted_tps(self) -> float:
        return 1 / self.seconds_per_token if self.seconds_per_token else 0.0

    def configure(self, settings: LlamaSettings) -> LlamaSettings:
        """`settings` for llama.cpp to load the model exactly as placed."""
        return dataclasses.replace(
            settings,
            gpu_layers=self.gpu_layers,
            tensor_split=self.tensor_split or None,
            cpu_tensors=OUTPUT_TENSORS if self.output_override else (),
        )

    def explain(self, names: dict[str, str] | None = None) -> str:
        names = names or {}
        output = max(index for layers in self.layers.values() for index in layers)
        labels = {device.id: device.label(names) for device in self.devices}
        parts = [
            f"{labels.get(where, 'this node (CPU)')}: {_describe(layers, output)}, ~{self.bytes[where] / 2**20:.0f} MiB"
            for where, layers in self.layers.items()
            if layers or where == LOCAL
        ]
        return "; ".join(parts) + f"; predicted decode ~{self.predicted_tps:.0f} tok/s (rough)"


def place(
    layout: ModelLayout,
    devices: list[Capacity],
    context_size: int,
    slots: int,
    gpu_layers: int | None = None,
    tensor_split: list[float] | None = None,
    local_free: int | None = None,
    ubatch: int = 512,
    flash_attention: bool = False,
) -> Placement:
    """Split `layout` over `devices`; raise PlacementError if it cannot fit.

    devices: RPC workers (in registration order) and this node's GPUs.
    gpu_layers: how many of the n_layer repeating layers go to devices, the last
    ones (default: all that fit); tensor_split: relative shares per device in
    llama.cpp's order (default: by free memory, GPUs first); local_free: this
    node's available memory, if it is to be checked. context_size: KV cells per
    slot; slots: sequences decoded together (one row of logits each);
    flash_attention: no attention scores in the compute buffers.
    """
    devices = [device for device in devices if not device.local] + [device for device in devices if device.local]
    n = layout.n_layer
    if gpu_layers is not None and gpu_layers < 0:
        raise PlacementError("gpu_layers must not be negative")
    budget = 0 if not devices else n if gpu_layers is None else min(gpu_layers, n)
    kv = layout.kv_bytes_per_token_layer * context_size * slots
    ubatch = min(ubatch, context_size)
    compute = layout.compute_bytes(ubatch, context_size, output=False, flash_attention=flash_attention)
    if tensor_split is not None:
        if len(tensor_split) != len(devices):
            raise PlacementError(f"tensor_split has {len(tensor_split)} entries for {len(devices)} devices")
        if any(share < 0 for share in tensor_split) or sum(tensor_split) <= 0:
            raise PlacementError("tensor_split needs non-negative shares with a positive sum")
        counts = [0] * len(devices)
        for index in _cut(tensor_split, budget) if budget else []:
            counts[index] += 1
    else:
        per_layer = max(layout.layer_bytes, default=0) + kv
        caps = [max(int((d.free_memory / HEADROOM - compute) // per_layer), 0) if per_layer else n for d in devices]
        counts = _fill_tiers(budget, devices, caps)
        if gpu_layers is not None:  # asked for: what does not fit is placed anyway, and refused below
            leftover = budget - sum(counts)
            extra = _fill(leftover, [float(d.free_memory) + 1 for d in devices], [n] * len(devices))
            counts = [a + b for a, b in zip(counts, extra, strict=True)]

    on_devices = sum(counts)
    split: tuple[float, ...] = ()
    offloaded = 0
    slot_device: list[int] = []
    if on_devices:
        # llama.cpp counts the output layer as the last offloaded one: one more slot on the
        # last device, which a local GPU keeps and an override otherwise sends back to the CPU.
        split, offloaded = _split_at(counts), on_devices + 1
        slot_device = _cut(split, offloaded)
    first = n + 1 - offloaded

    def assign(output_on_gpu: bool) -> dict[str, list[int]]:
        layers: dict[str, list[int]] = {LOCAL: [], **{device.id: [] for device in devices}}
        for index in range(n + 1):
            on_cpu = index < first or (index == n and not output_on_gpu)
            layers[LOCAL if on_cpu else devices[slot_device[index - first]].id].append(index)
        return layers

    def device_bytes(indices: list[int]) -> int:
        if not indices:
            return 0
        weights = sum(layout.output_weights if i == n else layout.layer_bytes[i] + kv for i in indices)
        buffer = layout.compute_bytes(ubatch, context_size, output=n in indices, flash_attention=flash_attention)
        return int((weights + buffer) * HEADROOM)

    output_on_gpu = on_devices == n and devices[-1].local
    layers = assign(output_on_gpu)
    if output_on_gpu and device_bytes(layers[devices[-1].id]) > devices[-1].free_memory:
        output_on_gpu, layers = False, assign(False)  # the whole model fits there, but not its output too
    sizes = {device.id: device_bytes(layers[device.id]) for device in devices}
    local = layers[LOCAL]
    sizes[LOCAL] = int((sum(layout.layer_bytes[i] + kv for i in local if i < n)
                        + (layout.output_bytes if n in local else 0)
                        + layout.compute_bytes(ubatch, context_size, n in local, flash_attention)) * HEADROOM) \
        + layout.input_bytes + layout.vocab_size * slots * F32  # embeddings (mmapped) and the logits buffer
    for device in devices:
        if sizes[device.id] > device.free_memory:
            raise PlacementError(
                f"the model does not fit: {'GPU' if device.local else 'worker'} {device.id} would need "
                f"~{sizes[device.id] / 2**20:.0f} MiB for {_describe(layers[device.id], n)} "
                f"but advertises {device.free_memory / 2**20:.0f} MiB free"
            )
    if local_free is not None and sizes[LOCAL] > local_free:
        raise PlacementError(
            f"the model does not fit: this node would need ~{sizes[LOCAL] / 2**20:.0f} MiB for the embeddings "
            f"and {_describe(layers[LOCAL], n)} but has {local_free / 2**20:.0f} MiB available"
        )
    return Placement(tuple(devices), split, offloaded, layers, sizes, output_override=bool(on_devices)
                     and not output_on_gpu, seconds_per_token=predict(layout, devices, layers))


def predict(layout: ModelLayout, devices: list[Capacity], layers: dict[str, list[int]]) -> float:
    """Seconds per decoded token: decode reads every weight once per token, at the memory
    bandwidth of the device holding it, plus a network round trip per worker used. Rough: the
    bandwidths are typical figures, not measured on the devices."""
    def weights(indices: list[int]) -> int:
        return sum(layout.output_weights if i == layout.n_layer else layout.layer_bytes[i] for i in indices)

    seconds = weights(layers[LOCAL]) / CPU_BYTES_PER_S
    for device in devices:
        if layers[device.id]:
            seconds += weights(layers[device.id]) / (GPU_BYTES_PER_S if device.gpu else CPU_BYTES_PER_S)
            seconds += 0.0 if device.local else HOP_S
    return seconds


def _fill_tiers(budget: int, devices: list[Capacity], caps: list[int]) -> list[int]:
    """Up to `budget` layers: GPUs first, shared by free memory, then CPU workers, none over its cap."""
    counts = [0] * len(devices)
    for tier in (True, False):
        members = [i for i, device in enumerate(devices) if device.gpu == tier]
        weights = [float(devices[i].free_memory) for i in members]
        for i, count in zip(members, _fill(budget - sum(counts), weights, [caps[i] for i in members]), strict=True):
            counts[i] = count
    return counts


def _fill(budget: int, weights: list[float], caps: list[int]) -> list[int]:
    """`budget` items shared in proportion to `weights` (Sainte-Laguë: each to whoever is
    furthest below its share), none over its cap; fewer when the caps run out."""
    counts = [0] * len(weights)
    for _ in range(budget):
        open_ = [i for i in range(len(weights)) if counts[i] < caps[i] and weights[i] > 0]
        if not open_:
            break
        chosen = min(open_, key=lambda i: ((counts[i] + 0.5) / weights[i], i))
        counts[chosen] += 1
    return counts


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
