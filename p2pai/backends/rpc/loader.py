"""Load a model configured with `rpc:` on the swarm's workers, or locally when none is usable."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psutil

from ..base import ModelLoadError
from ..llama.loading import MAX_AUTO_PARALLEL, LlamaSettings
from ..process import ChildSpec, ModelProcess
from . import native
from .placement import Capacity, Placement, gguf_layout, place
from .relay import Credentials, Endpoint, RelayRefused, probe
from .workers import WorkerInfo, select_workers

log = logging.getLogger(__name__)


async def healthy_endpoint(worker: WorkerInfo, credentials: Credentials) -> Endpoint | None:
    """The first of the worker's hosts where the relay authenticates and the RPC server answers."""
    for host in worker.hosts:
        endpoint = Endpoint(worker.peer_id, host, worker.port)
        try:
            await probe(endpoint, credentials)
            return endpoint
        except (OSError, asyncio.TimeoutError) as exc:
            reason = exc if isinstance(exc, RelayRefused) else repr(exc)
            log.warning("RPC worker %s (%s) at %s:%s is not usable: %s", worker.name, worker.peer_id, host,
                        worker.port, reason)
    return None


async def load_rpc_model(
    name: str,
    settings: LlamaSettings,
    wanted: str | list[str],
    tensor_split: list[float] | None,
    gpu_layers: int | None,
    workers: list[WorkerInfo],
    credentials: Credentials | None,
    on_failed: Callable[[ModelProcess], None],
) -> ModelProcess:
    """Health-check the wanted workers, explain the placement, then start the model's process.

    With no usable worker the model loads on this node alone, so a swarm whose
    workers are gone keeps serving; a model that does not fit on the usable
    workers is refused (PlacementError).
    """
    if credentials is None:
        raise ModelLoadError(f"model {name!r} uses RPC workers, but this node is not in a swarm")
    candidates = select_workers(wanted, workers, credentials.peer_id, native.protocol_version())
    endpoints = await asyncio.gather(*(healthy_endpoint(worker, credentials) for worker in candidates))
    usable = [(worker, endpoint)
              for worker, endpoint in zip(candidates, endpoints, strict=True) if endpoint is not None]
    if not usable:
        log.warning("model %r: no usable RPC worker (asked for %s); loading it locally", name, wanted)
        return await ModelProcess.start(ChildSpec(name, settings), on_failed)
    if tensor_split is not None and len(usable) != len(candidates):
        tensor_split = None  # the shares named workers that are gone; split by memory instead
    layout = await asyncio.to_thread(gguf_layout, settings.path)
    slots = settings.parallel or MAX_AUTO_PARALLEL  # automatic: at most this many
    placement: Placement = place(
        layout,
        [Capacity(worker.peer_id, worker.free_memory) for worker, _ in usable],
        settings.context_size * slots,
        slots,
        gpu_layers,
        tensor_split,
        psutil.virtual_memory().available,
    )
    log.info("model %r placement: %s", name, placement.explain({w.peer_id: w.name for w, _ in usable}))
    spec = ChildSpec(
        name=name,
        settings=placement.configure(settings),
        workers=tuple(endpoint for _, endpoint in usable),
        credentials=credentials,
    )
    engine = await ModelProcess.start(spec, on_failed)
    engine.placement = placement
    return engine
