"""What a node knows about the swarm's RPC workers, parsed from their overlay announcements."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

WORKER_ROLE = "llama-cpp-worker"
PAYLOAD_KEY = "worker"


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


def workers_from_members(members: Iterable[Any]) -> list[WorkerInfo]:
    """The workers among overlay members (p2pai.overlay.Member); malformed payloads are skipped.

    Announcements are authenticated by the swarm key but still come from other
    machines, so every field is type-checked rather than trusted.
    """
    workers = []
    for member in members:
        if WORKER_ROLE not in getattr(member, "roles", ()):
            continue
        info = _parse(member.peer_id, member.name, member.online, (member.payload or {}).get(PAYLOAD_KEY))
        if info is not None:
            workers.append(info)
    return workers


def _parse(peer_id: str, name: str, online: bool, payload: Any) -> WorkerInfo | None:
    if not isinstance(payload, dict) or not isinstance(payload.get("rpc"), dict):
        return None
    rpc = payload["rpc"]
    port, hosts = rpc.get("port"), rpc.get("hosts")
    free, protocol, in_use_by = payload.get("free_memory"), payload.get("protocol", ""), payload.get("in_use_by")
    if not (isinstance(port, int) and 0 < port < 65536 and isinstance(hosts, list) and hosts):
        return None
    if not all(isinstance(host, str) and host for host in hosts):
        return None
    if not (isinstance(free, (int, float)) and math.isfinite(free) and free >= 0):
        return None
    if not isinstance(protocol, str) or not (in_use_by is None or isinstance(in_use_by, str)):
        return None
    return WorkerInfo(peer_id, str(name), tuple(hosts), port, int(free), protocol, in_use_by, bool(online))


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
