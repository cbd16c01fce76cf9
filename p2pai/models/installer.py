"""Install and delete models while the node runs: LocalAI's model jobs.

A model comes from a gallery entry (`id`, or `name`), a model definition at a URL (`url`), or
the swarm (`name` that no gallery has: the file most peers announce for it, with the config of a
peer that serves it). Each of its files is fetched from every source that has it at once: the
pieces of a built-in model on this machine, the peers announcing its SHA-256, its HTTP(S) URI
(fetch.py). Then its config is written next to it (`NAME.yaml`, with `origin:`) and it is served.

What the request names is checked before a job starts (unknown model 404, unusable request 400,
a name taken 409); what can only fail later (no source, a wrong hash, no space) ends the job
with an error. Jobs are kept in the store; a job a stopped node left unfinished ends with an
error, and applying it again resumes the download where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import aiohttp
import yaml
from pydantic import ValidationError

from ..protocol.localai import ApplyRequest, GalleryFile, JobStatus
from ..store import Store
from .builtin import BUILTIN_GGUF
from .catalog import ModelCatalog
from .config import ModelConfig
from .digests import SHA256_HEX, FileDigest
from .fetch import Fetch, FetchError, Progress, RateLimit, Source, SourceGone, Wanted
from .gallery import Found, Galleries, GalleryEntry, GalleryError, resolve, safe_name
from .sources import HttpSource, PiecesSource

if TYPE_CHECKING:
    from ..protocol.pull import SharedModel

log = logging.getLogger(__name__)

T = TypeVar("T")

SAVE_JOB_S = 1.0
"""How often a running job's progress is written to the store."""
SWARM_ORIGIN = "swarm"
NOT_FROM_PEERS = ("rpc", "tensor_split", "gpu_layers", "threads", "origin")
"""Config fields that describe the peer's machine, not the model: left out of a config pulled from a peer."""
REMOTE_SCHEMES = ("http://", "https://", "github:", "huggingface://")


class InstallError(Exception):
    """The request cannot start a job (status: 400, 404 or 409)."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


@dataclass(frozen=True)
class SwarmFile:
    sha256: str
    size: int


class SwarmFiles(Protocol):
    """The files that peers announce (routing/peer_files.py)."""

    def file_for(self, model: str) -> SwarmFile | None: ...

    def size_of(self, sha256: str) -> int | None: ...

    def sources(self, sha256: str, size: int, root: str | None) -> Sequence[Source]: ...

    async def hashes(self, sha256: str, size: int) -> FileDigest | None: ...

    async def shared_model(self, model: str, sha256: str) -> SharedModel | None: ...


class Models(Protocol):
    """The models this node serves (serving/manager.py)."""

    catalog: ModelCatalog

    def names(self) -> list[str]: ...

    def config(self, name: str) -> ModelConfig: ...

    def add(self, config: ModelConfig) -> None: ...

    async def remove(self, name: str) -> None: ...


@dataclass(frozen=True)
class PlannedFile:
    filename: str
    sha256: str
    uris: tuple[str, ...] = ()
    size: int | None = None


@dataclass(frozen=True)
class Plan:
    name: str
    config: ModelConfig
    files: tuple[PlannedFile, ...]
    element: str
    """What was asked for (gallery@name, a URL, swarm:name): the job's gallery_element_name."""


@dataclass
class Job:
    id: str
    status: JobStatus
    saved: float = 0.0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Installer:
    def __init__(self, models: Models, store: Store, galleries: Galleries, swarm: SwarmFiles | None,
                 pull_rate: RateLimit, on_change: Callable[[], None]) -> None:
        self._models = models
        self._store = store
        self.galleries = galleries
        self._swarm = swarm
        self._rate = pull_rate
        self._on_change = on_change
        self._jobs: dict[str, Job] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._session: aiohttp.ClientSession | None = None
        self._saves: set[asyncio.Task[None]] = set()

    @property
    def models_dir(self) -> Path:
        return self._models.catalog.models_dir

    # Jobs

    async def apply(self, request: ApplyRequest) -> tuple[str, bool]:
        """Start installing; the job's uuid, and whether the model was already there."""
        plan = await self._plan(request)
        status = JobStatus(gallery_element_name=plan.element, model=plan.name, cancellable=False,
                           file_name=plan.files[0].filename if plan.files else "")
        job = Job(uuid.uuid4().hex, status)
        self._jobs[job.id] = job
        installed = self._installed(plan)
        if installed:
            self._end(job, "the model is already installed", progress=100.0)
        else:
            status.message = "starting"
            job.task = asyncio.create_task(self._install(job, plan), name=f"install {plan.name}")
        await self._store.save_job(job.id, job.status)
        return job.id, installed

    async def gallery_entries(self) -> list[Found]:
        return await self._gallery_call(self.galleries.entries())

    async def job(self, job_id: str) -> JobStatus | None:
        job = self._jobs.get(job_id)
        return job.status if job is not None else await self._store.job(job_id)

    async def jobs(self) -> dict[str, JobStatus]:
        stored = await self._store.jobs()
        return {**stored, **{job_id: job.status for job_id, job in self._jobs.items()}}

    async def wait(self, job_id: str) -> JobStatus | None:
        """The job's status once it has ended (tests, the CLI's own node)."""
        job = self._jobs.get(job_id)
        if job is not None and job.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(job.task)
        return await self.job(job_id)

    async def delete(self, name: str) -> str:
        """Stop serving ``name`` and delete its config and file (a deletion job, already ended)."""
        config = self._models.config(name)
        path = config.model_path(self.models_dir)
        if config.builtin:
            raise InstallError(409, f"{name!r} is built in; start the node with --no-default-model to serve "
                               "no built-in model", "builtin_model", "name")
        if config.source is None and path.parent.resolve() != self.models_dir.resolve():
            raise InstallError(409, f"{name!r} was given with --model and is not in the models dir; stop "
                               "passing it", "not_in_models_dir", "name")
        await self._models.remove(name)
        others = {self._models.config(n).model_path(self.models_dir).resolve() for n in self._models.names()}
        if config.source is not None:
            config.source.unlink(missing_ok=True)
        if path.resolve() not in others and path.parent.resolve() == self.models_dir.resolve():
            path.unlink(missing_ok=True)
        self._on_change()
        job = Job(uuid.uuid4().hex, JobStatus(deletion=True, model=name, gallery_element_name=name))
        self._jobs[job.id] = job
        self._end(job, f"deleted {name}", progress=100.0)
        await self._store.save_job(job.id, job.status)
        return job.id

    async def close(self) -> None:
        """Stop running jobs (they end cancelled; applying again resumes their downloads)."""
        tasks = [job.task for job in self._jobs.values() if job.task is not None and not job.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for save in list(self._saves):
            await save
        if self._session is not None:
            await self._session.close()

    # Planning: everything that can be refused before a job starts

    async def _plan(self, request: ApplyRequest) -> Plan:
        if request.url:
            if not request.url.startswith(REMOTE_SCHEMES):
                raise InstallError(400, "`url` must be an http(s)://, github: or huggingface:// URL of a model "
                                   "definition", "invalid_url", "url")
            entry = await self._gallery_call(self.galleries.definition(request.url))
            return self._from_entry(entry, request, request.url, [])
        if request.id:
            found = await self._gallery_call(self.galleries.find(request.id))
            if found is None:
                raise InstallError(404, f"No gallery has the model {request.id!r}", "model_not_found", "id")
            return await self._from_found(found, request)
        if request.name and not request.files:
            found = await self._gallery_call(self.galleries.find(request.name))
            if found is not None:
                return await self._from_found(found, request)
            return await self._from_swarm(request.name, request)
        if request.name:
            return self._from_entry(GalleryEntry(name=request.name), request, "request", [])
        raise InstallError(400, "Give the model's `id` (from a gallery), `url` (of a model definition) or `name` "
                           "(a gallery's model, or a model of the swarm)", "missing_model", "id")

    async def _from_found(self, found: Found, request: ApplyRequest) -> Plan:
        entry = found.entry
        base: list[GalleryEntry] = []
        if entry.url:
            base.append(await self._gallery_call(self.galleries.definition(entry.url, base=found.gallery.url)))
        return self._from_entry(entry, request, f"{found.gallery.name}@{entry.name}", base)

    async def _from_swarm(self, name: str, request: ApplyRequest) -> Plan:
        found = self._swarm.file_for(name) if self._swarm is not None else None
        shared = await self._swarm.shared_model(name, found.sha256) if self._swarm and found else None
        if found is None or shared is None:
            raise InstallError(404, f"No gallery has the model {name!r}, and no peer of the swarm shares it",
                               "model_not_found", "name")
        raw = shared.config.model_dump(exclude_none=True, exclude=set(NOT_FROM_PEERS))
        filename = _usable_filename(raw["parameters"]["model"], name)
        raw["parameters"]["model"] = filename
        entry = GalleryEntry(name=name, config_file=raw,
                             files=[GalleryFile(filename=filename, sha256=found.sha256)])
        return self._from_entry(entry, request, f"{SWARM_ORIGIN}:{name}", [], size=found.size)

    def _from_entry(self, entry: GalleryEntry, request: ApplyRequest, element: str, base: list[GalleryEntry],
                    size: int | None = None) -> Plan:
        name = request.name or entry.name
        try:
            safe_name(name)
        except ValueError as exc:
            raise InstallError(400, str(exc), "invalid_name", "name") from exc
        files: dict[str, GalleryFile] = {}
        for item in [*(f for b in base for f in b.files), *entry.files, *request.files]:
            files[item.filename] = item
        raw: dict[str, Any] = {}
        for layer in [*(b.config_file or {} for b in base), entry.config_file or {}, *(b.overrides for b in base),
                      entry.overrides, request.overrides]:
            raw = _merge(raw, layer)
        raw["name"] = name
        raw["origin"] = element
        parameters = raw.setdefault("parameters", {})
        if not isinstance(parameters, dict):
            raise InstallError(400, "`parameters` must be a mapping", "invalid_config", "overrides")
        if not parameters.get("model") and files:
            parameters["model"] = next(iter(files))
        try:
            config = ModelConfig.model_validate(raw)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in error["loc"])
            raise InstallError(400, f"The model's config is not usable: {where}: {error['msg']}",
                               "invalid_config", "overrides") from exc
        if Path(config.parameters.model).name != config.parameters.model or config.parameters.model not in files:
            raise InstallError(400, f"The model file {config.parameters.model!r} is not one of the model's files "
                               f"({', '.join(files) or 'none'})", "invalid_config", "overrides")
        planned = tuple(self._planned(item, size if item.filename == config.parameters.model else None)
                        for item in files.values())
        if config.name in self._models.names() and not self._installed_as(config.name, planned):
            raise InstallError(409, f"A model named {config.name!r} already exists; delete it first or install "
                               "under another `name`", "model_exists", "name")
        if (self.models_dir / f"{config.name}.yaml").exists() and config.name not in self._models.names():
            raise InstallError(409, f"{config.name}.yaml is already in the models dir (a config the node could not "
                               "use); remove it first", "model_exists", "name")
        return Plan(config.name, config, planned, element)

    def _planned(self, item: GalleryFile, size: int | None) -> PlannedFile:
        try:
            safe_name(item.filename)
        except ValueError as exc:
            raise InstallError(400, f"file {exc}", "invalid_file", "files") from exc
        if not SHA256_HEX.fullmatch(item.sha256.lower()):
            raise InstallError(400, f"The file {item.filename!r} has no SHA-256: p2pai installs only files it can "
                               "verify", "unverifiable_file", "files")
        uris: tuple[str, ...] = ()
        if item.uri:
            uri = resolve(item.uri)
            if not uri.startswith(("http://", "https://")):
                raise InstallError(400, f"The file {item.filename!r} comes from {item.uri!r}: only http(s), "
                                   "github: and huggingface:// URIs are fetched", "invalid_file", "files")
            uris = (uri,)
        return PlannedFile(item.filename, item.sha256.lower(), uris, size)

    async def _gallery_call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except GalleryError as exc:
            raise InstallError(400, str(exc), "gallery_unavailable", "id") from exc

    def _installed(self, plan: Plan) -> bool:
        return plan.name in self._models.names() and self._installed_as(plan.name, plan.files)

    def _installed_as(self, name: str, files: tuple[PlannedFile, ...]) -> bool:
        """Whether the model ``name`` served now has the main file of ``files`` (by size, then hash)."""
        config = self._models.config(name)
        path = config.model_path(self.models_dir)
        main = next((f for f in files if f.filename == path.name), None)
        if main is None:
            return False
        if config.builtin:  # assembled (on first use) checksum verified
            return any(b.file_name == path.name and b.sha256 == main.sha256 for b in BUILTIN_GGUF)
        return path.is_file() and _sha256_file(path) == main.sha256

    # Running a job

    async def _install(self, job: Job, plan: Plan) -> None:
        try:
            for number, file in enumerate(plan.files, 1):
                job.status.file_name = file.filename
                job.status.message = f"fetching {file.filename} ({number} of {len(plan.files)})"
                await self._fetch(job, file)
            path = self.models_dir / f"{plan.name}.yaml"
            config = plan.config.model_copy(update={"source": path})
            _write_atomically(path, yaml.safe_dump(plan.config.model_dump(exclude_none=True, exclude_defaults=True),
                                                   sort_keys=False))
            self._models.add(config)
            self._on_change()
            self._end(job, f"installed {plan.name}", progress=100.0)
        except (FetchError, SourceGone, OSError) as exc:
            self._end(job, str(exc), error=True)
        except asyncio.CancelledError:
            job.status.cancelled = True
            self._end(job, "cancelled (the node is stopping): apply again to resume", error=True)
            raise
        finally:
            await self._store.save_job(job.id, job.status)

    async def _fetch(self, job: Job, file: PlannedFile) -> None:
        target = self.models_dir / file.filename
        lock = self._locks.setdefault(file.sha256, asyncio.Lock())
        async with lock:
            if target.exists():
                if await asyncio.to_thread(_sha256_file, target) == file.sha256:
                    return
                raise FetchError(f"another file named {file.filename} is in the models dir; remove it first")
            self.models_dir.mkdir(parents=True, exist_ok=True)
            wanted, sources = await self._sources(file)
            fetch = Fetch(wanted, target, sources, self._store, self._rate, lambda p: self._progress(job, p),
                          more_sources=lambda: self._more_sources(file, wanted))
            await fetch.run()

    async def _sources(self, file: PlannedFile) -> tuple[Wanted, list[Source]]:
        sources: list[Source] = []
        size = file.size
        builtin = next((b for b in BUILTIN_GGUF if b.sha256 == file.sha256), None)
        parts = builtin.pieces() if builtin is not None else None
        if builtin is not None and parts is not None:
            sources.append(PiecesSource(parts))
            size = builtin.size
        if size is None and self._swarm is not None:
            size = self._swarm.size_of(file.sha256)
        https = [HttpSource(uri, self._http()) for uri in file.uris]
        for source in https:
            if size is not None:
                break
            try:
                size = await source.size()
            except SourceGone as exc:
                log.warning("%s: %s", file.filename, exc)
        if size is None:
            raise FetchError(f"no source has {file.filename}: no peer announces its SHA-256 {file.sha256}"
                             + (", and its URI cannot be used" if file.uris else " and it has no URI"))
        hashes = await self._swarm.hashes(file.sha256, size) if self._swarm is not None else None
        wanted = Wanted(file.sha256, size, hashes)
        if self._swarm is not None:
            sources += self._swarm.sources(file.sha256, size, hashes.root if hashes else None)
        return wanted, [*sources, *https]

    async def _more_sources(self, file: PlannedFile, wanted: Wanted) -> list[Source]:
        sources: list[Source] = [HttpSource(uri, self._http()) for uri in file.uris]
        if self._swarm is not None:
            root = wanted.hashes.root if wanted.hashes is not None else None
            sources += self._swarm.sources(file.sha256, wanted.size, root)
        return sources

    def _progress(self, job: Job, progress: Progress) -> None:
        status = job.status
        status.total_bytes, status.downloaded_bytes = progress.total, progress.done
        status.resumed_bytes, status.bytes_per_second = progress.resumed, round(progress.bytes_per_second, 1)
        status.sources = list(progress.sources)
        status.corrupt_chunks = progress.corrupt_chunks
        status.file_size, status.downloaded_size = _human(progress.total), _human(progress.done)
        status.progress = round(100.0 * progress.done / progress.total, 2) if progress.total else 0.0
        now = time.monotonic()
        if now - job.saved >= SAVE_JOB_S:
            job.saved = now
            save = asyncio.create_task(self._store.save_job(job.id, status.model_copy(deep=True)))
            self._saves.add(save)
            save.add_done_callback(self._saves.discard)

    def _end(self, job: Job, message: str, error: bool = False, progress: float | None = None) -> None:
        job.status.processed = True
        job.status.message = message
        if error:
            job.status.error = message
            log.warning("model job %s (%s) failed: %s", job.id, job.status.model, message)
        else:
            log.info("model job %s: %s", job.id, message)
        if progress is not None:
            job.status.progress = progress

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session


def _merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """``layer`` over ``base``, mappings merged key by key (LocalAI's overrides)."""
    merged = dict(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _usable_filename(announced: object, name: str) -> str:
    """The peer's file name if it is a plain, safe one; else one made from the model's name."""
    if isinstance(announced, str):
        with contextlib.suppress(ValueError):
            return safe_name(announced)
    return f"{name}.gguf"


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as source:
        while block := source.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()


def _human(size: int) -> str:
    """As LocalAI shows sizes: 98.4 MB."""
    if size < 1000:
        return f"{size} B"
    value = float(size)
    units = iter(("KB", "MB", "GB", "TB"))
    unit = next(units)
    while (value := value / 1000) >= 1000 and unit != "TB":
        unit = next(units)
    return f"{value:.1f} {unit}"
