"""The swarm as this node sees it: typed members, this node included."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field

from ..overlay import Member
from ..backends.rpc.workers import WorkerInfo
from .payload import FEDERATED_ROLE, WORKER_PAYLOAD_KEY, WORKER_ROLE, NodePayload, PeerEndpoint, _Lenient


class WorkerOffer(_Lenient):
    """What a llama.cpp RPC worker announces under the payload key "worker"."""

    rpc: PeerEndpoint = Field(default_factory=PeerEndpoint)
    free_memory: int = Field(0, ge=0)
    total_memory: int = Field(0, ge=0)
    threads: int = Field(0, ge=0)
    protocol: str = ""
    in_use_by: str | None = None
    cache: bool = False
    served: dict[str, int] = Field(default_factory=dict)
    """Sessions, bytes and restarts so far: shows from the outside that a worker is used."""

    @classmethod
    def parse(cls, raw: Any) -> WorkerOffer | None:
        if not isinstance(raw, dict):
            return None
        try:
            return cls.model_validate(raw)
        except ValueError:
            return None


def parse_payload(raw: dict[str, Any]) -> tuple[NodePayload, WorkerOffer | None]:
    return NodePayload.parse(raw), WorkerOffer.parse(raw.get(WORKER_PAYLOAD_KEY))


@dataclass(frozen=True)
class SwarmNode:
    id: str
    name: str
    version: str
    roles: tuple[str, ...]
    addrs: tuple[str, ...]
    online: bool
    connected: bool
    last_seen: float
    is_self: bool
    payload: NodePayload
    worker: WorkerOffer | None

    @classmethod
    def from_member(cls, member: Member, is_self: bool = False,
                    parsed: tuple[NodePayload, WorkerOffer | None] | None = None) -> SwarmNode:
        """``parsed``: the payload already parsed (it only changes with an announcement)."""
        payload, worker = parsed or parse_payload(member.payload)
        return cls(
            id=member.peer_id,
            name=member.name,
            version=member.version,
            roles=tuple(member.roles),
            addrs=tuple(member.addrs),
            online=member.online,
            connected=member.connected,
            last_seen=member.last_seen,
            is_self=is_self,
            payload=payload,
            worker=worker,
        )

    @property
    def federated(self) -> bool:
        return FEDERATED_ROLE in self.roles

    @property
    def llama_worker(self) -> bool:
        return WORKER_ROLE in self.roles and self.worker is not None

    def worker_info(self) -> WorkerInfo | None:
        """What the RPC loader needs to use this node as a worker, if it is a usable one."""
        worker = self.worker
        if not self.llama_worker or worker is None or not worker.rpc.port or not worker.rpc.hosts:
            return None
        return WorkerInfo(self.id, self.name, tuple(worker.rpc.hosts), worker.rpc.port, worker.free_memory,
                          worker.protocol, worker.in_use_by, self.online)

    def endpoint_urls(self) -> list[str]:
        """Base URLs of this node's peer (data-plane) HTTP endpoint, best first."""
        endpoint = self.payload.endpoint
        if endpoint is None or not endpoint.port:
            return []
        scheme = "https" if endpoint.tls else "http"
        return [f"{scheme}://{_host(host)}:{endpoint.port}" for host in endpoint.hosts]


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
