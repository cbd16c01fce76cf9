"""Place a llama.cpp model before loading it: on this node's GPUs, and with `rpc:` on the
swarm's workers too (locally when none is usable)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

import psutil

from ..base import ModelLoadError
from ..llama.devices import Device
from ..llama.loading import MAX_AUTO_PARALLEL, LlamaSettings
from ..llama.memory import gguf_layout
from ..process import ChildSpec, ModelProcess
from . import native
from .placement import Capacity, Placement, place
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


def local_gpus(gpus: list[Device]) -> list[Capacity]:
    return [Capacity(gpu.name, gpu.free, gpu=True, local=True) for gpu in gpus]


def gpu_names(gpus: list[Device]) -> dict[str, str]:
    return {gpu.name: f"{gpu.name} ({gpu.description})" if gpu.description else gpu.name for gpu in gpus}


async def place_locally(name: str, settings: LlamaSettings, gpus: list[Device], gpu_layers: int | None,
                        tensor_split: list[float] | None) -> LlamaSettings:
    """`settings` with this node's GPUs taking as many layers as fit, explained in the log.

    Without GPUs, or with `gpu_layers` set, llama.cpp gets them as configured (as `-ngl`)."""
    if not gpus or gpu_layers is not None:
        split = tuple(tensor_split) if tensor_split else None
        return dataclasses.replace(settings, gpu_layers=gpu_layers or 0, tensor_split=split)
    layout = await asyncio.to_thread(gguf_layout, settings.path)
    placement = place(layout, local_gpus(gpus), settings.context_size, settings.parallel or MAX_AUTO_PARALLEL,
                      tensor_split=tensor_split, ubatch=settings.batch,
                      flash_attention=settings.flash_attention != "off")
    log.info("model %r placement: %s", name, placement.explain(gpu_names(gpus)))
    return placement.configure(settings)


async def load_rpc_model(
    name: str,
    settings: LlamaSettings,
    wanted: str | list[str],
    tensor_split: list[float] | None,
    gpu_layers: int | None,
    workers: list[WorkerInfo],
    credentials: Credentials | None,
    on_failed: Callable[[ModelProcess], None],
    gpus: list[Device],
) -> ModelProcess:
    """Health-check the wanted workers, explain the placement, then start the model's process.

    `gpus`: this node's own, which llama.cpp uses after the workers. With no
    usable worker the model loads on this node alone, so a swarm whose workers
    are gone keeps serving; a model that does not fit on the usable devices is
    refused (PlacementError). `tensor_split` has a share per wanted worker, then
    per local GPU.
    """
    if credentials is None:
        raise ModelLoadError(f"model {name!r} uses RPC workers, but this node is not in a swarm")
    candidates = select_workers(wanted, workers, credentials.peer_id, native.protocol_version())
    endpoints = await asyncio.gather(*(healthy_endpoint(worker, credentials) for worker in candidates))
    usable = [(worker, endpoint)
              for worker, endpoint in zip(candidates, endpoints, strict=True) if endpoint is not None]
    if not usable:
        log.warning("model %r: no usable RPC worker (asked for %s); loading it locally", name, wanted)
        local = await place_locally(name, settings, gpus, gpu_layers, None)
        return await ModelProcess.start(ChildSpec(name, local), on_failed)
    if tensor_split is not None and len(usable) != len(candidates):
        tensor_split = None  # the shares named workers that are gone; split by memory instead
    layout = await asyncio.to_thread(gguf_layout, settings.path)

    def place_on(workers: list[WorkerInfo]) -> Placement:
        return place(
            layout,
            [Capacity(worker.peer_id, worker.free_memory, gpu=worker.gpu) for worker in workers] + local_gpus(gpus),
            settings.context_size,
            settings.parallel or MAX_AUTO_PARALLEL,  # automatic: at most this many
            gpu_layers,
            tensor_split,
            psutil.virtual_memory().available,
            settings.batch,
            settings.flash_attention != "off",  # "auto" turns it on where the backend supports it
        )

    placement = place_on([worker for worker, _ in usable])
    used = [(worker, endpoint) for worker, endpoint in usable if placement.layers[worker.peer_id]]
    if tensor_split is None and len(used) < len(usable):  # a worker left without layers is not leased
        usable = used
        placement = place_on([worker for worker, _ in usable])
    log.info("model %r placement: %s", name,
             placement.explain({**{w.peer_id: w.name for w, _ in usable}, **gpu_names(gpus)}))
    spec = ChildSpec(
        name=name,
        settings=placement.configure(settings),
        workers=tuple(endpoint for _, endpoint in usable),
        credentials=credentials,
    )
    engine = await ModelProcess.start(spec, on_failed)
    engine.placement = placement
    return engine
