"""How much memory a GGUF model needs: weights, KV cache per slot, compute buffers.

Read from the file's header and tensor table only (no load), so a node can
tell before loading whether a model fits, and announce it. The same reader
gives layer placement (backends/rpc/placement.py) its per-layer sizes, and
`ModelLayout.compute_bytes` the compute buffer of each device.

Public API (pure, no llama.cpp):
- `gguf_layout(path)` -> ModelLayout: sizes read from the file.
- `estimate(layout, context_per_slot, slots, batch)` -> MemoryEstimate with
  `weights`, `kv_cache_per_slot`, `compute` and `total`.
- `estimate_file(path, ...)`: both in one call.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..base import ModelLoadError

F32 = 4
HEADROOM = 1.10
"""Allocator slack and what the estimate leaves out (tokenizer, process): ask for 10% more."""
SWA_PATTERNS = {"gemma2": 2, "gemma3": 6, "cohere2": 4}
"""Architectures whose layers use a sliding window except every n-th one (as llama.cpp sets them up;
the GGUF gives the window, not the pattern). Others count every layer with the full context."""
PROCESS_BYTES = 160 << 20
"""The model's child process itself (Python, llama.cpp's code), measured as RSS before any model is loaded."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs once loaded with `slots` sequences, all on one device."""

    weights: int
    kv_cache_per_slot: int
    """f16 K and V of every layer for one slot's context (sliding-window layers: their window and a batch)."""
    compute: int
    """llama.cpp's compute buffer for one batch, the logits of its every token included."""
    slots: int

    @property
    def total(self) -> int:
        return int((self.weights + self.kv_cache_per_slot * self.slots + self.compute) * HEADROOM) + PROCESS_BYTES


def estimate(layout: ModelLayout, context_per_slot: int, slots: int, batch: int = 512,
             flash_attention: bool = False) -> MemoryEstimate:
    """What llama.cpp allocates for `layout` with `slots` sequences of `context_per_slot` tokens."""
    slots = max(slots, 1)
    batch = max(min(batch, context_per_slot * slots), slots)
    window = min(context_per_slot, layout.sliding_window + batch) if layout.sliding_window else context_per_slot
    cells = (layout.n_layer - layout.swa_layers) * context_per_slot + layout.swa_layers * window
    return MemoryEstimate(
        weights=sum(layout.layer_bytes) + layout.output_bytes + layout.input_bytes,
        kv_cache_per_slot=layout.kv_bytes_per_token_layer * cells,
        compute=layout.compute_bytes(batch, context_per_slot, output=True, flash_attention=flash_attention),
        slots=slots,
    )


def estimate_file(path: str, context_per_slot: int, slots: int, batch: int = 512,
                  flash_attention: bool = False) -> MemoryEstimate:
    return estimate(gguf_layout(path), context_per_slot, slots, batch, flash_attention)


@dataclass(frozen=True)
class ModelLayout:
    """Sizes read from a GGUF (see gguf_layout)."""

    layer_bytes: tuple[int, ...]
    output_bytes: int
    """The output layer's own weights: only its norm when tied to the embeddings (counted as input)."""
    input_bytes: int
    kv_bytes_per_token_layer: int
    vocab_size: int
    embedding_length: int = 0
    head_count: int = 0
    feed_forward_length: int = 0
    tied_output: bool = False
    """The output projection is the embedding matrix: a device holding the output needs a copy of it."""
    sliding_window: int = 0
    """Tokens a sliding-window layer attends to (0: none): llama.cpp caches that many, plus a batch."""
    swa_layers: int = 0
    """How many layers use the sliding window."""

    @property
    def n_layer(self) -> int:
        return len(self.layer_bytes)

    @property
    def output_weights(self) -> int:
        """What the output layer reads per token, and holds on an offload device: a tied one reads
        the embedding matrix (llama.cpp puts a copy of it on the device)."""
        return self.output_bytes + (self.input_bytes if self.tied_output else 0)

    def compute_bytes(self, batch: int, context_per_slot: int, output: bool, flash_attention: bool = False) -> int:
        """One device's compute buffer for a batch of `batch` tokens: a layer's activations, the
        attention scores over a slot's context unless flash attention, and where the output layer
        runs the logits of every token of the batch (llama.cpp reserves that worst case: 514.5 MiB
        for gemma-3-270m's 262,144-word vocabulary at batch 512, estimated here as 557 MiB)."""
        scores = 0 if flash_attention else self.head_count * context_per_slot
        activations = 4 * self.embedding_length + 2 * self.feed_forward_length + scores
        return F32 * batch * (activations + (self.vocab_size if output else 0))


def gguf_layout(path: str) -> ModelLayout:
    """Read layer sizes and the KV cache shape from a GGUF file's header and tensor table.

    A small header walk instead of gguf.GGUFReader, which takes about 16 s on
    gemma-3-270m because it materialises the 262,144-entry vocabulary.
    """
    fields, tensors = _read_gguf_header(path)
    arch = str(fields["general.architecture"])

    def number(key: str, default: int = 0) -> int:
        value = fields.get(key, default)
        return int(value) if isinstance(value, (int, float)) else default

    n_layer = number(f"{arch}.block_count")
    layer_bytes = [0] * n_layer
    named: dict[str, int] = {}
    for name, size in tensors:
        match = re.match(r"blk\.(\d+)\.", name)
        if match and int(match.group(1)) < n_layer:
            layer_bytes[int(match.group(1))] += size
        else:
            named[name] = size
    embeddings = named.get("token_embd.weight", 0)
    output = named.get("output.weight", 0) + named.get("output_norm.weight", 0)
    embedding_length = number(f"{arch}.embedding_length")
    heads = number(f"{arch}.attention.head_count", 1)
    kv_heads = number(f"{arch}.attention.head_count_kv", heads)
    key_length = number(f"{arch}.attention.key_length", embedding_length // max(heads, 1))
    window = number(f"{arch}.attention.sliding_window")
    pattern = SWA_PATTERNS.get(arch, 0)
    value_length = number(f"{arch}.attention.value_length", key_length)
    return ModelLayout(
        layer_bytes=tuple(layer_bytes),
        output_bytes=output,
        input_bytes=embeddings,
        kv_bytes_per_token_layer=2 * kv_heads * (key_length + value_length),  # f16 K and V
        vocab_size=number("tokenizer.ggml.tokens", number(f"{arch}.vocab_size")),
        embedding_length=embedding_length,
        feed_forward_length=number(f"{arch}.feed_forward_length"),
        head_count=heads,
        tied_output="output.weight" not in named,
        sliding_window=window if pattern else 0,
        swa_layers=n_layer - n_layer // pattern if window and pattern else 0,
    )


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def _read_gguf_header(path: str) -> tuple[dict[str, object], list[tuple[str, int]]]:
    """Metadata (arrays reduced to their length) and (tensor name, bytes) pairs."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f:

        def read(fmt: str) -> Any:
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

        def string() -> str:
            return f.read(read("Q")).decode("utf-8", errors="replace")

        def value(kind: int) -> object:
            if kind == _STRING:
                return string()
            if kind == _ARRAY:
                item_kind, count = read("I"), read("Q")
                if item_kind == _STRING:
                    for _ in range(count):
                        f.seek(read("Q"), 1)
                elif item_kind in _SCALARS:
                    f.seek(count * struct.calcsize(_SCALARS[item_kind]), 1)
                else:
                    for _ in range(count):
                        value(item_kind)
                return count
            return read(_SCALARS[kind])

        if f.read(4) != b"GGUF":
            raise ModelLoadError(f"{path} is not a GGUF file")
        read("I")  # format version
        n_tensors, n_fields = read("Q"), read("Q")
        fields = {}
        for _ in range(n_fields):
            key = string()
            fields[key] = value(read("I"))
        tensors = []
        for _ in range(n_tensors):
            name = string()
            dims = [read("Q") for _ in range(read("I"))]
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(read("I"))]
            read("Q")  # offset
            tensors.append((name, int(np.prod(dims, dtype=np.int64)) // block * size))
    return fields, tensors
