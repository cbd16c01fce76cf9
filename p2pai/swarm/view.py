"""The swarm as this node sees it: typed members, this node included."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, field_validator

from ..backends.llama.devices import Device
from ..backends.rpc.workers import WorkerInfo
from ..overlay import Member
from .payload import (
    FEDERATED_ROLE,
    WORKER_PAYLOAD_KEY,
    WORKER_ROLE,
    Bytes,
    Count,
    NodePayload,
    PeerEndpoint,
    _Lenient,
)


class WorkerOffer(_Lenient):
    """What a llama.cpp RPC worker announces under the payload key "worker"."""

    rpc: PeerEndpoint = Field(default_factory=PeerEndpoint)
    free_memory: Bytes = 0
    total_memory: Bytes = 0
    threads: Count = 0
    protocol: str = Field(default="", max_length=32)
    in_use_by: str | None = Field(default=None, max_length=128)
    cache: bool = False
    isolated: bool = False
    """Its llama.cpp RPC server is unreachable from other local processes (a network namespace of its own)."""
    served: dict[Annotated[str, Field(max_length=32)], Annotated[int, Field(ge=0, le=1 << 63)]] = Field(
        default_factory=dict, max_length=16)
    """Sessions, bytes and restarts so far: shows from the outside that a worker is used."""
    device: Device | None = None
    """The device its RPC server computes on (a GPU when it has one); free_memory is that device's."""

    @field_validator("device", mode="wrap")
    @classmethod
    def _device_or_none(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Device | None:
        try:
            return handler(value)
        except ValidationError:
            return None

    @classmethod
    def parse(cls, raw: Any, rejected: Counter[str] | None = None) -> WorkerOffer | None:
        if raw is None:
            return None
        try:
            return cls.model_validate(raw)
        except ValueError:
            if rejected is not None:
                rejected["worker"] += 1
            return None


def parse_payload(raw: dict[str, Any], rejected: Counter[str] | None = None) -> tuple[NodePayload, WorkerOffer | None]:
    """The node and worker parts of a payload; malformed parts are left out and counted in ``rejected``."""
    return NodePayload.parse(raw, rejected), WorkerOffer.parse(raw.get(WORKER_PAYLOAD_KEY), rejected)


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
                          worker.protocol, worker.in_use_by, self.online,
                          gpu=worker.device is not None and worker.device.is_gpu)

    def endpoint_urls(self) -> list[str]:
        """Base URLs of this node's peer (data-plane) HTTP endpoint, best first."""
        endpoint = self.payload.endpoint
        if endpoint is None or not endpoint.port:
            return []
        scheme = "https" if endpoint.tls else "http"
        return [f"{scheme}://{_host(host)}:{endpoint.port}" for host in endpoint.hosts]


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
