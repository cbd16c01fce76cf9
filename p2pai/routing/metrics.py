"""What this node has seen of each peer it forwarded to (shown in /api/p2p)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

LATENCY_SMOOTHING = 0.2


@dataclass
class PeerMetrics:
    requests: int = 0
    failures: int = 0
    in_flight: int = 0
    latency_ms: float | None = None
    """Smoothed time until the peer's response headers arrived."""
    last_error: str = ""
    lost: int = 0
    """Requests it was working on when it died or went offline."""
    crashed: int = 0
    """Requests it answered with `model_crashed`: its model died of them."""

    def started(self) -> None:
        self.requests += 1
        self.in_flight += 1

    def answered(self, seconds: float) -> None:
        ms = seconds * 1000
        previous = self.latency_ms
        self.latency_ms = ms if previous is None else previous + LATENCY_SMOOTHING * (ms - previous)

    def failed(self, reason: str, lost: bool) -> None:
        self.failures += 1
        self.lost += lost
        self.last_error = reason

    def finished(self) -> None:
        self.in_flight -= 1

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.latency_ms is not None:
            data["latency_ms"] = round(self.latency_ms, 2)
        return data
