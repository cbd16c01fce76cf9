"""What the process of a CTranslate2 model needs to load and serve it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Ct2Kind = Literal["whisper", "generator"]


@dataclass(frozen=True)
class Ct2Settings:
    path: str
    """The converted model's directory (model.bin, config.json, the tokenizer's files)."""
    kind: Ct2Kind
    device: str = "cpu"
    """CTranslate2's device: cpu, cuda or auto."""
    compute_type: str = "int8"
    """Weights and compute precision: int8 (fast on CPUs), int8_float16, float16, float32, default..."""
    workers: int = 2
    """Requests served at once, each by its own CTranslate2 replica (a bounded pool; see bench/README.md,
    audio): more wait in the model's queue."""
    threads: int = 1
    """Compute threads of each replica."""
    max_queue: int = 64
    """Requests that may wait for a free worker; more are refused by the node (503)."""
    context_size: int = 2048
    """Text generation: most tokens of a prompt plus its answer."""
