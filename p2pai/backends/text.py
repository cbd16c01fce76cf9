"""Turning sampled tokens into the text a client sees.

Pure and engine-agnostic: bytes of token pieces are decoded incrementally
(a multi-byte character may span tokens), and text that might be the start of
a stop string is held back until it is known not to be one.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass
class StopResult:
    text: str
    """Text that is safe to send now."""
    stopped: bool
    """A stop string was found; `text` ends just before it."""
    stop: str | None = None
    """The stop string found (the first in the text; of two at one place, the first given)."""


class TextAssembler:
    """Accumulates token bytes and releases text, honouring stop strings."""

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self._stop = tuple(s for s in stop if s)
        self._max_stop = max((len(s) for s in self._stop), default=0)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""

    def push(self, piece: bytes) -> StopResult:
        """Add one token's bytes; return what may be sent now."""
        self._held += self._decoder.decode(piece)
        return self._release(final=False)

    def finish(self) -> StopResult:
        """End of generation: release everything still held (minus a stop string)."""
        self._held += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> StopResult:
        found = self._first_stop()
        if found is not None:
            cut, stop = found
            text, self._held = self._held[:cut], ""
            return StopResult(text, True, stop)
        keep = 0 if final else self._partial_stop_suffix()
        split = len(self._held) - keep
        text, self._held = self._held[:split], self._held[split:]
        return StopResult(text, False)

    def _first_stop(self) -> tuple[int, str] | None:
        found = [(i, n, s) for n, s in enumerate(self._stop) if (i := self._held.find(s)) >= 0]
        if not found:
            return None
        cut, _, stop = min(found)
        return cut, stop

    def _partial_stop_suffix(self) -> int:
        """Length of the longest tail of the held text that starts some stop string."""
        tail = self._held[-self._max_stop:] if self._max_stop else ""
        for length in range(len(tail), 0, -1):
            end = tail[-length:]
            if any(s.startswith(end) for s in self._stop):
                return length
        return 0
