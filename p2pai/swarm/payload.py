"""What a node announces about itself: the payload of its overlay announcements.

Receivers parse it defensively (`NodePayload.parse`): a peer running another
version, or a broken one, must not be able to break this node's view.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import psutil
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from ..backends.llama import llama_tasks
from ..backends.llama.devices import Device, gpus
from ..backends.tasks import TASKS, Task
from ..models.digests import MAX_CHUNKS, MAX_RANGE, FileDigest, chunk_size_for
from ..overlay.announcement import MAX_PAYLOAD_BYTES
from ..serving.manager import FREE_MEMORY_MAX_AGE_S, ModelManager

log = logging.getLogger(__name__)

MAX_ANNOUNCED_MODELS = 64  # keeps the payload far below the overlay's 32 KiB limit
FEDERATED_ROLE = "federated"
WORKER_ROLE = "llama-cpp-worker"
WORKER_PAYLOAD_KEY = "worker"

# Every figure a member announces is bounded: routing compares and sums them, so a NaN, an
# infinity, a negative or an absurd count from one member must not skew every decision.
Count = Annotated[int, Field(ge=0, le=1_000_000)]
"""Requests, slots, queue entries, threads, CPUs."""
Bytes = Annotated[int, Field(ge=0, le=1 << 60)]
"""Memory and file sizes (at most 1 EiB)."""
Rate = Annotated[float, Field(ge=0, le=1_000_000, allow_inf_nan=False)]
"""Tokens per second."""
Seconds = Annotated[float, Field(ge=0, le=86_400, allow_inf_nan=False)]
ByteRate = Annotated[float, Field(ge=0, le=1e15, allow_inf_nan=False)]
"""Bytes per second."""


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class FileOffer(_Lenient):
    """A model file that a node sends to peers in chunks (models/digests.py): peers check the
    chunks they pull against the list whose hash is `root`, and the whole file against `sha256`."""

    sha256: Sha256
    size: int = Field(ge=1, le=MAX_CHUNKS * MAX_RANGE)
    chunk_size: int
    root: Sha256

    @model_validator(mode="after")
    def _chunking(self) -> FileOffer:
        if self.chunk_size != chunk_size_for(self.size):
            raise ValueError(f"chunk_size {self.chunk_size} is not the one for {self.size} bytes")
        return self

    @classmethod
    def of(cls, digest: FileDigest) -> FileOffer:
        return cls(sha256=digest.sha256, size=digest.size, chunk_size=digest.chunk_size, root=digest.root)


class ModelOffer(_Lenient):
    """One model a node can serve, with the live figures routing weighs."""

    name: str = Field(min_length=1, max_length=256)
    backend: str = Field(default="llama-cpp", max_length=64)
    size: Bytes = 0
    """Bytes of the weights file (0 when unknown, e.g. not yet assembled)."""
    loaded: bool = False
    loading: bool = False
    fits: bool = True
    """It can be loaded there now (after unloading idle models): its estimate fits the node's memory."""
    memory: Bytes = 0
    """Estimated bytes it takes once loaded there (0: unknown)."""
    load_s: Seconds | None = None
    """Expected seconds to load it there: measured last time, else from the node's load speed."""
    tasks: list[Task] = Field(default_factory=list)
    """What it serves there; a request goes only to nodes whose model serves its task."""
    embeddings: bool = False
    """"embeddings" in tasks, still sent for nodes that predate tasks."""
    slots: Count = 1
    in_flight: Count = 0
    queued: Count = 0
    decode_tps: Rate | None = None
    answer_tokens: Rate | None = None
    """Tokens a generation produced there (recent average): how long a slot stays taken."""
    crashes: Count = 0
    """Times this model's process died on that node since it started."""
    providers: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=8)
    """ONNX Runtime's execution providers in use there (once loaded)."""
    file: FileOffer | None = None
    """Its weights file, which peers may pull; None until hashed (or malformed: only it is dropped)."""

    @field_validator("tasks", mode="before")
    @classmethod
    def _known_tasks(cls, value: Any) -> Any:
        """Tasks this version does not know (announced by a newer node) are left out, not fatal."""
        if isinstance(value, list):  # bounded: the whole payload is at most 32 KiB
            return list(dict.fromkeys(task for task in value if isinstance(task, str) and task in TASKS))
        return value

    @model_validator(mode="after")
    def _tasks_of_older_nodes(self) -> ModelOffer:
        """A node that predates tasks serves llama.cpp models: text, and embeddings when it says so."""
        if "tasks" not in self.model_fields_set:
            self.tasks = list(llama_tasks(self.embeddings))
        return self

    @field_validator("file", mode="wrap")
    @classmethod
    def _file_or_none(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> FileOffer | None:
        try:
            return handler(value)
        except ValidationError:
            return None


class Capacity(_Lenient):
    slots: Count = 0
    in_flight: Count = 0
    queued: Count = 0


class Memory(_Lenient):
    total: Bytes = 0
    available: Bytes = 0
    rss: Bytes = 0


class PeerEndpoint(_Lenient):
    """Where peers reach a service of a node.

    Receivers use only hosts that pass swarm.endpoints.usable_hosts."""

    hosts: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=8)
    port: int = Field(default=0, ge=0, le=65535)


class DataEndpoint(PeerEndpoint):
    """Where peers send data-plane HTTP requests (signed with the swarm key, over TLS)."""

    tls: bool = True
    """False only in the measurement-only plaintext mode; a node with TLS never uses such an endpoint."""


class NodePayload(_Lenient):
    endpoint: DataEndpoint | None = None
    models: list[ModelOffer] = Field(default_factory=list, max_length=MAX_ANNOUNCED_MODELS)
    capacity: Capacity = Field(default_factory=Capacity)
    memory: Memory = Field(default_factory=Memory)
    load_speed: ByteRate | None = None
    """Bytes per second this node loads model files at, measured (None: not yet)."""
    cpus: Count = 0
    gpus: list[Device] = Field(default_factory=list, max_length=16)
    """Its GPUs as llama.cpp sees them (empty on a CPU-only node)."""

    @field_validator("gpus", mode="wrap")
    @classmethod
    def _gpus_or_none(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> list[Device]:
        """A malformed device list costs the member only its device list."""
        try:
            return handler(value)
        except ValidationError:
            return []

    @field_validator("endpoint", mode="wrap")
    @classmethod
    def _endpoint_or_none(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> PeerEndpoint | None:
        """A malformed endpoint costs the member only its endpoint: peers then use the tunnel."""
        try:
            return handler(value)
        except ValidationError:
            return None

    @classmethod
    def parse(cls, raw: dict[str, Any], rejected: Counter[str] | None = None) -> NodePayload:
        """The payload a peer announced, or an empty one if it makes no sense (counted in ``rejected``)."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            log.debug("ignoring a malformed payload: %s", exc)
            if rejected is not None:
                rejected["payload"] += 1
            return cls()


FileDigests = Callable[[Path], FileDigest | None]
"""The digest of a model file, if this node has hashed it (models/file_index.py)."""


def model_offers(manager: ModelManager, files: FileDigests | None = None) -> list[ModelOffer]:
    offers = []
    for name in manager.names()[:MAX_ANNOUNCED_MODELS]:
        config = manager.config(name)
        stats = manager.stats(name)
        tasks = manager.tasks(name)
        path = config.model_path(manager.catalog.models_dir)
        # A GGUF is the whole model; an ONNX model also needs its tokenizer, so it is not offered for pulls.
        digest = files(path) if files is not None and config.backend_name == "llama-cpp" else None
        offers.append(
            ModelOffer(
                name=name,
                backend=config.backend_name,
                size=_file_size(path),
                loaded=stats.loaded,
                loading=manager.loading(name),
                fits=stats.loaded or manager.plan(name, FREE_MEMORY_MAX_AGE_S).fits,  # one memory read per second
                memory=manager.memory_needed(name) or 0,
                load_s=round(manager.load_seconds(name), 1),
                tasks=list(tasks),
                embeddings="embeddings" in tasks,
                slots=stats.slots,
                in_flight=stats.in_flight,
                queued=stats.queued,
                decode_tps=round(stats.decode_tps, 1) if stats.decode_tps else None,
                answer_tokens=round(stats.answer_tokens) if stats.answer_tokens else None,
                crashes=stats.crashes,
                providers=list(stats.providers),
                file=FileOffer.of(digest) if digest is not None else None,
            )
        )
    return offers


_sizes: dict[Path, int] = {}


def _file_size(path: Path) -> int:
    """Read once per file (this runs every PUBLISH_INTERVAL); 0 until the file exists,
    as the built-in model is only assembled on first use. A CTranslate2 model is a directory: its model.bin."""
    size = _sizes.get(path)
    if size is None:
        weights = path / "model.bin" if path.is_dir() else path
        size = weights.stat().st_size if weights.is_file() else 0
        if size:
            _sizes[path] = size
    return size


def local_payload(manager: ModelManager, endpoint: DataEndpoint, files: FileDigests | None = None) -> NodePayload:
    """This node's payload now. Figures are rounded so that noise alone does not
    trigger an announcement (every change is announced within 0.1 s).

    The models are offered only once the endpoint listens (it has a port): offered before, a peer would
    route requests to them through the overlay's tunnel, for want of an address, until the next announcement."""
    offers = model_offers(manager, files) if endpoint.port else []
    loaded = [offer for offer in offers if offer.loaded]
    memory = psutil.virtual_memory()
    mib = 1 << 20
    return _within_limit(NodePayload(
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
        load_speed=float(f"{manager.load_speed.bytes_per_s:.2g}") if manager.load_speed.bytes_per_s else None,
        cpus=os.cpu_count() or 1,
        gpus=[gpu.model_copy(update={"free": gpu.free // (64 * mib) * 64 * mib}) for gpu in gpus(manager.devices)],
    ))


def announced(payload: NodePayload) -> dict[str, Any]:
    """The payload as it is announced: fields at their defaults are left out (receivers parse them
    back), so that 64 models with long names and every figure fit the overlay's 32 KiB. A model's
    `tasks` never are: an offer without them reads as an older node's (text generation)."""
    dumped = payload.model_dump(exclude_defaults=True)
    for offer, model in zip(payload.models, dumped.get("models", ()), strict=True):
        model["tasks"] = list(offer.tasks)
    return dumped


def _within_limit(payload: NodePayload) -> NodePayload:
    """Leave out the file digests of the last models while the payload is too large to announce
    (64 models with long names): those models stay routable, only not pullable."""
    with_file = [offer for offer in payload.models if offer.file is not None]
    while with_file and len(json.dumps(announced(payload)).encode()) > MAX_PAYLOAD_BYTES:  # as the overlay counts
        with_file.pop().file = None
    return payload
