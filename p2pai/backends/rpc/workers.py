"""The swarm's RPC workers as the loader sees them (parsed from announcements by p2pai.swarm)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerInfo:
    peer_id: str
    name: str
    hosts: tuple[str, ...]
    port: int
    free_memory: int
    protocol: str
    in_use_by: str | None = None
    online: bool = True
    gpu: bool = False
    """It serves a GPU (free_memory is that GPU's)."""


def select_workers(wanted: str | list[str], workers: list[WorkerInfo], self_id: str, protocol: str) -> list[WorkerInfo]:
    """The workers a model config asks for that look usable, in a stable (device) order.

    `wanted` is "auto" (every online worker) or a list of peer ids or names.
    Offline workers, those leased to another node and those speaking another
    RPC protocol version are left out; `protocol` "" skips the version check.
    """
    if wanted == "auto":
        chosen = sorted(workers, key=lambda worker: (worker.name, worker.peer_id))
    else:
        chosen = []
        for entry in wanted:
            match = next((w for w in workers if entry in (w.peer_id, w.name)), None)
            if match is not None and match not in chosen:
                chosen.append(match)
    return [
        worker
        for worker in chosen
        if worker.online
        and worker.in_use_by in (None, self_id)
        and (not protocol or not worker.protocol or worker.protocol == protocol)
    ]
