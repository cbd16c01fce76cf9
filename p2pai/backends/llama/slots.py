"""Slots: the context's sequences, and which one a new prompt should take.

A slot keeps the tokens in its KV cache after its request ends, so the next
turn of a chat (same prefix) resumes where the last one stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False)
class Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)
    """Tokens in this sequence's KV cache, position i holding tokens[i]."""
    busy: bool = False
    last_used: int = 0
    """Step at which its last request was admitted: least recently used slots are reused first."""


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def pick_slot(slots: list[Slot], prompt: list[int]) -> tuple[Slot, int] | None:
    """The free slot sharing the longest prefix with `prompt` (ties: least recently used), and that length."""
    best: tuple[int, int, Slot] | None = None
    for slot in slots:
        if slot.busy:
            continue
        key = (common_prefix(slot.tokens, prompt), -slot.last_used)
        if best is None or key > best[:2]:
            best = (*key, slot)
    if best is None:
        return None
    return best[2], best[0]
