"""What the model process of an ONNX model needs to load and batch it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OnnxTask = Literal["embeddings", "rerank"]


@dataclass(frozen=True)
class OnnxSettings:
    path: str
    tokenizer: str
    """tokenizer.json, read with the `tokenizers` library."""
    task: OnnxTask = "embeddings"
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    max_length: int = 512
    """Most tokens of one input (special tokens included): the model's position embeddings bound it."""
    threads: int = 0
    """ONNX Runtime's intra-op threads; 0: its default (one per physical core)."""
    providers: tuple[str, ...] = ()
    """Execution providers in order of preference (short names such as cuda, cpu, or ONNX Runtime's
    own); empty: the best available."""
    max_batch: int = 32
    """Most inputs one run takes."""
    batch_wait: float = 0.005
    """Seconds a run may wait for more requests while requests come concurrently."""
    max_queue: int = 1024
    """Inputs that may wait; a request that would make more wait is refused by the node (503)."""
