"""What a node announces about itself: the payload of its overlay announcements.

Receivers parse it defensively (`NodePayload.parse`): a peer running another
version, or a broken one, must not be able to break this node's view.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..serving.manager import ModelManager

log = logging.getLogger(__name__)

MAX_ANNOUNCED_MODELS = 64  # keeps the payload far below the overlay's 32 KiB limit
FEDERATED_ROLE = "federated"
WORKER_ROLE = "llama-cpp-worker"
WORKER_PAYLOAD_KEY = "worker"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ModelOffer(_Lenient):
    """One model a node can serve, with the live figures routing weighs."""

    name: str
    backend: str = "llama-cpp"
    size: int = 0
    """Bytes of the weights file (0 when unknown, e.g. not yet assembled)."""
    loaded: bool = False
    embeddings: bool = False
    slots: int = 1
    in_flight: int = 0
    queued: int = 0
    decode_tps: float | None = None


class Capacity(_Lenient):
    slots: int = 0
    in_flight: int = 0
    queued: int = 0


class Memory(_Lenient):
    total: int = 0
    available: int = 0
    rss: int = 0


class PeerEndpoint(_Lenient):
    """Where peers reach a service of a node."""

    hosts: list[str] = Field(default_factory=list, max_length=8)
    port: int = Field(0, ge=0, le=65535)


class DataEndpoint(PeerEndpoint):
    """Where peers send data-plane HTTP requests (signed with the swarm key, over TLS)."""

    tls: bool = True
    """False only in the measurement-only plaintext mode; a node with TLS never uses such an endpoint."""


class NodePayload(_Lenient):
    endpoint: DataEndpoint | None = None
    models: list[ModelOffer] = Field(default_factory=list, max_length=MAX_ANNOUNCED_MODELS)
    capacity: Capacity = Field(default_factory=Capacity)
    memory: Memory = Field(default_factory=Memory)
    cpus: int = 0
    gpus: list[dict[str, Any]] = Field(default_factory=list, max_length=16)

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> NodePayload:
        """The payload a peer announced, or an empty one if it makes no sense."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            log.debug("ignoring a malformed payload: %s", exc)
            return cls()


def model_offers(manager: ModelManager) -> list[ModelOffer]:
    offers = []
    for name in manager.names()[:MAX_ANNOUNCED_MODELS]:
        config = manager.config(name)
        stats = manager.stats(name)
        path = config.model_path(manager.catalog.models_dir)
        offers.append(
            ModelOffer(
                name=name,
                size=_file_size(path),
                loaded=stats.loaded,
                embeddings=config.embeddings,
                slots=stats.slots,
                in_flight=stats.in_flight,
                queued=stats.queued,
                decode_tps=round(stats.decode_tps, 1) if stats.decode_tps else None,
            )
        )
    return offers


_sizes: dict[Path, int] = {}


def _file_size(path: Path) -> int:
    """Read once per file (this runs every PUBLISH_INTERVAL); 0 until the file exists,
    as the built-in model is only assembled on first use."""
    size = _sizes.get(path)
    if size is None:
        size = path.stat().st_size if path.is_file() else 0
        if size:
            _sizes[path] = size
    return size


def local_payload(manager: ModelManager, endpoint: DataEndpoint | None) -> NodePayload:
    """This node's payload now. Figures are rounded so that noise alone does not
    trigger an announcement (every change is announced within 0.1 s)."""
    offers = model_offers(manager)
    loaded = [offer for offer in offers if offer.loaded]
    memory = psutil.virtual_memory()
    mib = 1 << 20
    return NodePayload(
        endpoint=endpoint,
        models=offers,
        capacity=Capacity(
            slots=sum(offer.slots for offer in loaded),
            in_flight=sum(offer.in_flight for offer in offers),
            queued=sum(offer.queued for offer in offers),
        ),
        memory=Memory(
            total=memory.total,
            available=memory.available // (64 * mib) * 64 * mib,
            rss=psutil.Process().memory_info().rss // (16 * mib) * 16 * mib,
        ),
        cpus=os.cpu_count() or 1,
    )
