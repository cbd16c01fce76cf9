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
    """The free slot to serve `prompt`, and how many of its tokens are already cached there.

    The slot sharing the longest prefix, if that prefix is worth it (more than
    a BOS token and a tenth of the prompt, as llama-server's similarity rule);
    otherwise the least recently used slot, so that an unrelated prompt does not
    evict a conversation whose next turn may come.
    """
    free = [slot for slot in slots if not slot.busy]
    if not free:
        return None
    matches = [(common_prefix(slot.tokens, prompt), slot) for slot in free]
    best, slot = max(matches, key=lambda m: (m[0], -m[1].last_used))
    if best > max(1, len(prompt) // 10):
        return slot, best
    lru = min(free, key=lambda s: s.last_used)
    return lru, common_prefix(lru.tokens, prompt)
