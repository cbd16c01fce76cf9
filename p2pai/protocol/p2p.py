"""GET /api/p2p: the swarm in the shape of LocalAI's P2PNodesResponse, plus our own fields.

A node's model figures (ModelOffer, Capacity, Memory) are shown as the node
announced them: the swarm payload's own models.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..backends.llama.devices import Device
from ..swarm.payload import Capacity, Memory, ModelOffer


class PeerMetrics(BaseModel):
    """What this node has seen of the requests it forwarded to a peer."""

    requests: int
    failures: int
    in_flight: int
    latency_ms: float | None
    """Smoothed time until the peer's response headers arrived."""
    last_error: str
    lost: int
    """Requests it was working on when it died or went offline."""
    crashed: int
    """Requests it answered with `model_crashed`: its model died of them."""


class OverlayStats(BaseModel):
    """Counters for diagnostics; counters added later pass through."""

    model_config = ConfigDict(extra="allow")

    connections: int
    accepted: int
    """Announcements accepted."""
    dropped: dict[str, int]
    """Announcements dropped, by reason."""
    dials: int
    hints: int
    """Addresses learnt from mDNS answers, in the address book (until the peer's own announcement confirms one)."""
    hints_dropped: dict[str, int]
    rejected: dict[str, int]
    """Announced payloads (or parts) refused as malformed, by reason."""


class NodeData(BaseModel):
    """LocalAI's NodeData (id, name, serviceID, tunnelAddress, lastSeen) plus our own fields."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    id: str
    name: str
    serviceID: str
    tunnelAddress: str
    lastSeen: str
    """RFC 3339, UTC."""
    online: bool
    connected: bool
    is_self: bool = Field(alias="self")
    version: str
    roles: list[str]


class ServingNode(NodeData):
    address: str
    """Base URL of the node's peer endpoint ("" when it announces none)."""
    models: list[str]
    loaded: list[str]
    model_stats: list[ModelOffer]
    capacity: Capacity
    memory: Memory
    cpus: int
    gpus: list[Device]
    """Its GPUs: name, backend (CUDA, ROCm, Metal, Vulkan), free and total memory."""


class FederatedNode(ServingNode):
    metrics: PeerMetrics | None
    """None until this node forwarded a request to it."""


class SelfNode(ServingNode):
    addrs: list[str]
    """This node's libp2p addresses."""
    stats: OverlayStats


class WorkerNode(NodeData):
    """A llama.cpp RPC worker; tunnelAddress is its relay's HOST:PORT."""

    free_memory: int
    total_memory: int
    threads: int
    protocol: str
    in_use_by: str | None
    """The node holding the worker's lease, if any."""
    cache: bool
    isolated: bool
    """Its llama.cpp RPC server is unreachable from other local processes."""
    served: dict[str, int]
    device: Device | None
    """What its RPC server computes on: a GPU when it has one, else the CPU (None: an older worker)."""


class P2PNodesResponse(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    federated_nodes: list[FederatedNode]
    llama_cpp_nodes: list[WorkerNode]
    mlx_nodes: list[NodeData]
    """Always empty: kept for LocalAI's shape."""
    this_node: SelfNode = Field(alias="self")
