"""Loads each configured model once, on demand, and hands out its engine."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

from ..backends.base import Engine, ModelLoadError, ModelStats
from ..backends.llama import LlamaEngine, LlamaSettings
from ..backends.rpc.loader import load_rpc_model
from ..backends.rpc.relay import Credentials
from ..backends.rpc.workers import WorkerInfo
from ..models.catalog import ModelCatalog, ensure_default_model_file
from ..models.config import ModelConfig

log = logging.getLogger(__name__)


class UnknownModelError(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"The model {name!r} does not exist")
        self.name = name


@dataclass
class LoadEvent:
    model: str
    phase: str
    """"start", "done" or "failed"."""
    seconds: float = 0.0
    error: str = ""


class ModelManager:
    """Owns the engines of this node's models.

    A model loads on first use (or at start with preload); a request arriving
    while its model loads waits for that load instead of starting another.
    """

    def __init__(
        self,
        catalog: ModelCatalog,
        threads: int | None = None,
        context_size: int | None = None,
        parallel: int | None = None,
        on_load: Callable[[LoadEvent], None] | None = None,
        workers: Callable[[], list[WorkerInfo]] | None = None,
        rpc_credentials: Credentials | None = None,
    ) -> None:
        """`workers` lists the swarm's RPC workers and `rpc_credentials` is how this node
        authenticates to them; both are needed only by models configured with `rpc:`."""
        self.catalog = catalog
        self._threads = threads
        self._context_size = context_size
        self._parallel = parallel
        self._on_load = on_load or (lambda event: None)
        self._workers = workers or (lambda: [])
        self._rpc_credentials = rpc_credentials
        self._engines: dict[str, Engine] = {}
        self._loading: dict[str, asyncio.Task[Engine]] = {}

    def names(self) -> list[str]:
        return self.catalog.names()

    def config(self, name: str) -> ModelConfig:
        config = self.catalog.get(name)
        if config is None:
            raise UnknownModelError(name)
        return config

    def loaded(self) -> list[str]:
        return list(self._engines)

    def stats(self, name: str) -> ModelStats:
        engine = self._engines.get(name)
        if engine is not None:
            return engine.stats()
        slots = self.config(name).parallel or self._parallel or 0  # 0: automatic, known once loaded
        return ModelStats(loaded=False, in_flight=0, queued=0, slots=slots, decode_tps=None)

    async def engine(self, name: str) -> Engine:
        if name in self._engines:
            return self._engines[name]
        config = self.config(name)
        task = self._loading.get(name)
        if task is None:
            task = asyncio.create_task(self._load(config))
            self._loading[name] = task
            task.add_done_callback(lambda _: self._loading.pop(name, None))
        # Shielded: one impatient client must not cancel a load others wait for.
        return await asyncio.shield(task)

    async def preload(self) -> None:
        for name in self.names():
            try:
                await self.engine(name)
            except ModelLoadError:
                pass  # reported through on_load; the node still serves the others

    async def _load(self, config: ModelConfig) -> Engine:
        started = time.perf_counter()
        self._on_load(LoadEvent(config.name, "start"))
        try:
            if config.builtin:
                await asyncio.to_thread(ensure_default_model_file, config)
            engine = await self._start_engine(config)
        except ModelLoadError as exc:
            self._on_load(LoadEvent(config.name, "failed", time.perf_counter() - started, str(exc)))
            raise
        except Exception as exc:  # e.g. a damaged built-in model package
            self._on_load(LoadEvent(config.name, "failed", time.perf_counter() - started, str(exc)))
            raise ModelLoadError(f"could not prepare model {config.name!r}: {exc}") from exc
        self._engines[config.name] = engine
        self._on_load(LoadEvent(config.name, "done", time.perf_counter() - started))
        return engine

    async def _start_engine(self, config: ModelConfig) -> Engine:
        if config.rpc is None:
            return await LlamaEngine.load(config.name, self._settings(config))

        def forget(engine: Engine) -> None:
            """The model lost a worker: the next request reloads it on what is left."""
            if self._engines.get(config.name) is engine:
                del self._engines[config.name]

        return await load_rpc_model(config.name, self._settings(config), config.rpc, config.tensor_split,
                                    config.gpu_layers, self._workers(), self._rpc_credentials, forget)

    def _settings(self, config: ModelConfig) -> LlamaSettings:
        return LlamaSettings(
            path=str(config.model_path(self.catalog.models_dir)),
            context_size=config.context_size or self._context_size or 4096,
            parallel=config.parallel or self._parallel,
            threads=config.threads or self._threads or 0,
            batch=config.batch,
            mmap=config.mmap,
            embeddings=config.embeddings,
            pooling=config.pooling,
            gpu_layers=config.gpu_layers or 0,
            max_queue=config.max_queue,
        )

    async def close(self) -> None:
        for task in list(self._loading.values()):
            task.cancel()
        for engine in self._engines.values():
            await engine.close()
        self._engines.clear()
