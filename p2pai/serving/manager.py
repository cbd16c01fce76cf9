"""Loads each configured model once, on demand, and hands out its engine.

Before a load it checks the model fits (estimated from its file, see
backends/llama/memory.py) and unloads the least recently used idle models
when `max_loaded` or the memory budget asks for room (serving/residency.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil

from ..backends.base import Engine, ModelCrashedError, ModelLoadError, ModelRestartingError, ModelStats
from ..backends.ct2 import Ct2Settings, ct2_tasks
from ..backends.ct2.files import Ct2FilesError, model_kind, whisper_multilingual
from ..backends.llama import LlamaSettings, llama_tasks
from ..backends.llama.devices import Device, detect, gpus
from ..backends.llama.loading import FlashAttention, auto_parallel_for
from ..backends.llama.memory import PROCESS_BYTES, estimate, gguf_layout
from ..backends.onnx import OnnxSettings, onnx_tasks
from ..backends.onnx.process import OnnxProcess
from ..backends.process import ChildSpec, ModelProcess
from ..backends.rpc.loader import load_rpc_model, place_locally
from ..backends.rpc.relay import Credentials
from ..backends.rpc.workers import WorkerInfo
from ..backends.tasks import Task
from ..metrics import CRASHES, LOAD_FAILURES, LOADS, UNLOADS, labelled, model_label
from ..models.catalog import ModelCatalog, prepare_builtin
from ..models.config import ModelConfig
from .residency import LoadPlan, LoadSpeed, Resident, plan_load

log = logging.getLogger(__name__)


class UnknownModelError(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"The model {name!r} does not exist")
        self.name = name


CRASH_WINDOW_S = 300.0
"""Crashes this recent count towards the restart delay."""
MAX_RESTART_DELAY_S = 60.0
HANDED_OUT_S = 2.0
"""The longest a model handed to a request stays in use before the request reaches it (see _claimed)."""
FREE_MEMORY_MAX_AGE_S = 1.0
"""How old the system's free memory a node's figures weigh may be (`plan`'s ``max_age``): they are asked for
on every request routed here, and reading it costs about as much as the rest of the figures together."""
CT2_WORKERS = 2
"""Concurrent requests of a CTranslate2 model, each on a replica of its own, when its config and the node
say nothing: on 2 cores, 2 Whisper replicas of 1 thread serve four clients about twice the audio per
second that one replica of 2 threads does one request at a time (bench/README.md, audio)."""


@dataclass
class Crashes:
    """How often a model's process died, and when it may be started again.

    The first crash in CRASH_WINDOW_S restarts the model on its next request; each
    further one doubles the wait (2 s, 4 s, ... up to MAX_RESTART_DELAY_S), so a
    request that kills the model on arrival cannot keep a node busy reloading it.
    """

    count: int = 0
    last: str | None = None
    recent: deque[float] = field(default_factory=deque)
    not_before: float = 0.0

    def record(self, reason: str, now: float) -> float:
        """Note a crash; returns the seconds before the model may start again."""
        self.count += 1
        self.last = reason
        while self.recent and now - self.recent[0] > CRASH_WINDOW_S:
            self.recent.popleft()
        self.recent.append(now)
        delay = 0.0 if len(self.recent) < 2 else min(2.0 ** (len(self.recent) - 1), MAX_RESTART_DELAY_S)
        self.not_before = now + delay
        return delay


@dataclass
class LoadEvent:
    model: str
    phase: str
    """"start", "done", "failed" or "unloaded"."""
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
        flash_attention: FlashAttention = "auto",
        devices: list[Device] | None = None,
        max_loaded: int | None = None,
        memory_budget: int | None = None,
    ) -> None:
        """`workers` lists the swarm's RPC workers and `rpc_credentials` is how this node
        authenticates to them; both are needed only by models configured with `rpc:`.
        `devices`: this machine's, for placing layers on its GPUs (None: detected, see `detect_devices`).
        `max_loaded`, `memory_budget` (bytes): when to unload idle models (None: no limit
        but the memory the system has available)."""
        self.catalog = catalog
        self._threads = threads
        self._context_size = context_size
        self._parallel = parallel
        self._on_load = on_load or (lambda event: None)
        self._workers = workers or (lambda: [])
        self._rpc_credentials = rpc_credentials
        self._flash_attention = flash_attention
        self._engines: dict[str, Engine] = {}
        self._loading: dict[str, asyncio.Task[Engine]] = {}
        self._crashes: dict[str, Crashes] = {}
        self._max_loaded = max_loaded
        self._memory_budget = memory_budget
        self._last_used: dict[str, float] = {}
        self._handed: dict[str, tuple[float, int]] = {}
        """When each model was last handed to a request, and how many requests it had received then."""
        self._needs: dict[str, int | None] = {}
        self._sizes: dict[str, int] = {}
        """Model file sizes (for `load_seconds`), forgotten with the estimates in `_needs`."""
        self._free: tuple[float, int] | None = None
        """When the system's free memory was read (monotonic) and what it was; None after a load or unload."""
        self._load_seconds: dict[str, float] = {}
        self._room = asyncio.Lock()
        self.load_speed = LoadSpeed()
        self._devices = devices
        self._detecting: asyncio.Task[list[Device]] | None = None

    def detect_devices(self) -> asyncio.Task[list[Device]]:
        """Detect this machine's devices in the background (once at a time); the result is `devices`."""
        if self._detecting is None or self._detecting.done():
            self._detecting = asyncio.create_task(self._detect())
        return self._detecting

    async def _detect(self) -> list[Device]:
        self._devices = await detect()
        return self._devices

    @property
    def devices(self) -> list[Device]:
        """The devices known so far ([] until the first detection ends)."""
        return self._devices or []

    async def _gpus(self) -> list[Device]:
        if self._devices is None:
            await asyncio.shield(self.detect_devices())
        return gpus(self.devices)

    def names(self) -> list[str]:
        return self.catalog.names()

    def config(self, name: str) -> ModelConfig:
        config = self.catalog.get(name)
        if config is None:
            raise UnknownModelError(name)
        return config

    def tasks(self, name: str) -> tuple[Task, ...]:
        """What the model serves, as its backend declares it from its config (known before it loads)."""
        config = self.config(name)
        if config.backend_name == "onnx":
            return onnx_tasks(config.task or "embeddings")
        if config.backend_name == "ctranslate2":
            directory = config.model_path(self.catalog.models_dir)
            try:
                kind = model_kind(directory)
                return ct2_tasks(kind, kind == "whisper" and whisper_multilingual(directory))
            except Ct2FilesError:
                return ()  # not a model (yet): it serves nothing, and says why when asked to load
        return llama_tasks(config.embeddings)

    def add(self, config: ModelConfig) -> None:
        """Serve a model installed while the node runs (it loads on first use)."""
        self.catalog.models[config.name] = config
        self._forget_file(config.name)  # it may replace one of the same name

    async def remove(self, name: str) -> None:
        """Stop serving a model: its process ends (requests on it fail) and it leaves the catalog."""
        self.config(name)
        self.catalog.models.pop(name)
        self._forget_file(name)
        if self.catalog.default == name:
            self.catalog.default = None
        task = self._loading.pop(name, None)
        if task is not None:
            task.cancel()
        engine = self._engines.pop(name, None)
        if engine is not None:
            await engine.close()
            self._free = None

    def loaded(self) -> list[str]:
        return list(self._engines)

    def loading(self, name: str) -> bool:
        return name in self._loading

    def memory_needed(self, name: str) -> int | None:
        """Estimated bytes the model takes once loaded here (None: unknown, e.g. its file is not there yet)."""
        if name not in self._needs:
            config = self.config(name)
            if not config.model_path(self.catalog.models_dir).is_file():
                return None  # asked again once the file exists (a built-in model is assembled on first use)
            self._needs[name] = self._estimate(config)
        return self._needs[name]

    def plan(self, name: str, max_age: float = 0.0) -> LoadPlan:
        """Whether ``name`` can be loaded now, and which idle models would be unloaded for it, weighing
        the system's free memory as read at most ``max_age`` seconds ago (or since the last load or unload)."""
        if name in self._engines:
            return LoadPlan(True)
        need = self.memory_needed(name) or 0
        return plan_load(need, self._free_memory(max_age), self._residents(), self._max_loaded,
                         self._memory_budget)

    def _free_memory(self, max_age: float) -> int:
        now = time.monotonic()
        if self._free is None or now - self._free[0] > max_age:
            self._free = (now, psutil.virtual_memory().available)
        return self._free[1]

    def _forget_file(self, name: str) -> None:
        """Estimate ``name``'s memory and measure its file again when next asked: it may have changed."""
        self._needs.pop(name, None)
        self._sizes.pop(name, None)

    def load_seconds(self, name: str) -> float:
        """Expected time to load ``name`` here: as measured last time, else from this node's load speed."""
        if name in self._load_seconds:
            return self._load_seconds[name]
        size = self._sizes.get(name)
        if size is None:
            size = _file_size(self.config(name).model_path(self.catalog.models_dir))
            if size:  # asked again once the file exists, as memory_needed is
                self._sizes[name] = size
        return self.load_speed.seconds(size)

    async def _unload(self, name: str, engine: Engine) -> None:
        log.info("unloading model %r", name)
        await engine.close()
        self._free = None
        self._on_load(LoadEvent(name, "unloaded"))

    def _residents(self) -> list[Resident]:
        residents = []
        for name, engine in self._engines.items():
            stats = engine.stats()
            residents.append(Resident(name, self.memory_needed(name) or 0, self._last_used.get(name, 0.0),
                                      busy=bool(stats.in_flight or stats.queued or stats.calls)
                                      or self._claimed(name, stats.submitted)))
        return residents

    def _claimed(self, name: str, submitted: int) -> bool:
        """Handed to a request that has not reached the model yet (a request may first read its
        upload or render its prompt); a request that fails before then holds it HANDED_OUT_S at most."""
        handed_at, submitted_then = self._handed.get(name, (0.0, 0))
        return submitted == submitted_then and time.monotonic() - handed_at < HANDED_OUT_S

    def _estimate(self, config: ModelConfig) -> int | None:
        path = config.model_path(self.catalog.models_dir)
        if config.rpc is not None:
            return None  # its layers go to RPC workers; the RPC placement checks what stays here
        if config.backend_name != "llama-cpp":
            return path.stat().st_size * 2 + PROCESS_BYTES  # ONNX Runtime's arena holds about a copy
        settings = self._settings(config)
        try:
            layout = gguf_layout(str(path))
        except (ModelLoadError, OSError, ValueError, KeyError, struct.error) as exc:
            log.warning("cannot estimate the memory of %r: %s", config.name, exc)
            return None
        slots = settings.parallel or auto_parallel_for(layout.kv_bytes_per_token_layer * layout.n_layer,
                                                       settings.context_size)
        # "auto" turns flash attention on where the backend has it, as llama.cpp's CPU backend does
        return estimate(layout, settings.context_size, slots, settings.batch,
                        settings.flash_attention != "off").total

    def stats(self, name: str) -> ModelStats:
        engine = self._engines.get(name)
        if engine is not None:
            stats = engine.stats()
        else:
            slots = self.config(name).parallel or self._parallel or 0  # 0: automatic, known once loaded
            stats = ModelStats(loaded=False, in_flight=0, queued=0, slots=slots, decode_tps=None)
        crashes = self._crashes.get(name)
        return stats if crashes is None else replace(stats, crashes=crashes.count, last_crash=crashes.last)

    async def engine(self, name: str) -> Engine:
        self._last_used[name] = time.monotonic()
        if name in self._engines:
            return self._engines[name]
        config = self.config(name)
        crashes = self._crashes.get(name)
        if crashes is not None and (wait := crashes.not_before - time.monotonic()) > 0:
            raise ModelRestartingError(
                f"the model {name!r} crashed {len(crashes.recent)} times in the last {CRASH_WINDOW_S / 60:.0f} "
                f"minutes (last: {crashes.last}); it restarts in {wait:.0f} s", retry_after=math.ceil(wait))
        task = self._loading.get(name)
        if task is None:
            task = asyncio.create_task(self._load(config))
            self._loading[name] = task
            task.add_done_callback(lambda _: self._loading.pop(name, None))
        # Shielded: one impatient client must not cancel a load others wait for.
        engine = await asyncio.shield(task)
        self._last_used[name] = time.monotonic()  # handed out now, however long the load took
        self._handed[name] = (self._last_used[name], engine.stats().submitted)
        return engine

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
                await asyncio.to_thread(prepare_builtin, config)
            async with self._room:  # one plan at a time, or two loads could each count the same free memory
                await self._make_room(config.name)
                engine = await self._start_engine(config)
        except ModelLoadError as exc:
            labelled(LOAD_FAILURES, model_label(config.name)).inc()
            self._on_load(LoadEvent(config.name, "failed", time.perf_counter() - started, str(exc)))
            raise
        except Exception as exc:  # e.g. a damaged built-in model package
            labelled(LOAD_FAILURES, model_label(config.name)).inc()
            self._on_load(LoadEvent(config.name, "failed", time.perf_counter() - started, str(exc)))
            raise ModelLoadError(f"could not prepare model {config.name!r}: {exc}") from exc
        labelled(LOADS, model_label(config.name)).inc()
        self._engines[config.name] = engine
        self._free = None
        self._handed[config.name] = (time.monotonic(), engine.stats().submitted)  # its waiters resume next
        seconds = time.perf_counter() - started
        self._load_seconds[config.name] = seconds
        self.load_speed.record(_file_size(config.model_path(self.catalog.models_dir)), seconds)
        self._on_load(LoadEvent(config.name, "done", seconds))
        if gpus(self.devices):
            self.detect_devices()  # announce the GPU memory the model left free
        return engine

    async def _make_room(self, name: str) -> None:
        """Unload what the plan says, or refuse a model that cannot fit (ModelLoadError)."""
        self._forget_file(name)  # the file may have changed (or appeared) since it was estimated
        plan = self.plan(name)
        if not plan.fits:
            raise ModelLoadError(f"the model {name!r} does not fit in this node's memory: {plan.reason}")
        # Taken out of service all at once: a request arriving while the first closes cannot get the next.
        victims = [(victim, self._engines.pop(victim)) for victim in plan.evict]
        for victim, engine in victims:
            await self._unload(victim, engine)

    async def _start_engine(self, config: ModelConfig) -> Engine:
        def forget(engine: ModelProcess) -> None:
            """The model's process died (or lost an RPC worker): the next request starts it again."""
            if self._engines.get(config.name) is engine:
                del self._engines[config.name]
                self._free = None
            if isinstance(engine.failure, ModelCrashedError):
                labelled(CRASHES, model_label(config.name)).inc()
                crashes = self._crashes.setdefault(config.name, Crashes())
                delay = crashes.record(str(engine.failure), time.monotonic())
                log.error("model %r crashed (%d times so far); %s", config.name, crashes.count,
                          f"it may restart in {delay:.0f} s" if delay else "it restarts on the next request")

        if config.backend_name == "onnx":
            return await OnnxProcess.start(ChildSpec(config.name, self._onnx_settings(config)), forget)
        if config.backend_name == "ctranslate2":
            return await ModelProcess.start(ChildSpec(config.name, self._ct2_settings(config)), forget)
        local_gpus = await self._gpus()
        if config.rpc is None:
            settings = await place_locally(config.name, self._settings(config), local_gpus, config.gpu_layers,
                                           config.tensor_split)
            return await ModelProcess.start(ChildSpec(config.name, settings), forget)
        return await load_rpc_model(config.name, self._settings(config), config.rpc, config.tensor_split,
                                    config.gpu_layers, self._workers(), self._rpc_credentials, forget, local_gpus)

    def _settings(self, config: ModelConfig) -> LlamaSettings:
        return LlamaSettings(
            path=str(config.model_path(self.catalog.models_dir)),
            context_size=config.context_size or self._context_size or 4096,
            parallel=config.parallel or self._parallel,
            threads=config.threads or self._threads or 0,
            batch=config.batch or 512,
            mmap=config.mmap,
            embeddings=config.embeddings,
            pooling=config.pooling,
            max_queue=config.max_queue or 64,
            flash_attention=config.flash_attention or self._flash_attention,
        )

    def _onnx_settings(self, config: ModelConfig) -> OnnxSettings:
        models_dir = self.catalog.models_dir
        return OnnxSettings(
            path=str(config.model_path(models_dir)),
            tokenizer=str(config.tokenizer_path(models_dir)),
            task=config.task or "embeddings",
            pooling="cls" if config.pooling == "cls" else "mean",
            normalize=config.normalize,
            max_length=config.max_length or 512,
            threads=config.threads or self._threads or 0,
            providers=tuple(config.providers or ()),
            max_batch=config.batch or 32,
            batch_wait=config.batch_wait_ms / 1000,
            max_queue=config.max_queue or 1024,
        )

    def _ct2_settings(self, config: ModelConfig) -> Ct2Settings:
        directory = config.model_path(self.catalog.models_dir)
        try:
            kind = model_kind(directory)
        except Ct2FilesError as exc:
            raise ModelLoadError(str(exc)) from exc
        workers = config.parallel or self._parallel or CT2_WORKERS
        threads = config.threads or self._threads or os.cpu_count() or 1
        return Ct2Settings(
            path=str(directory),
            kind=kind,
            device=config.device,
            compute_type=config.compute_type,
            workers=workers,
            threads=max(1, threads // workers),
            max_queue=config.max_queue or 64,
            context_size=config.context_size or self._context_size or 4096,
        )

    async def close(self) -> None:
        for task in list(self._loading.values()):
            task.cancel()
        for name, engine in self._engines.items():
            await engine.close()
            labelled(UNLOADS, model_label(name)).inc()
        self._engines.clear()


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
