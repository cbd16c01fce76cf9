"""LocalAI's API family: POST /v1/rerank (also /rerank), on both apps; its model management
(`/models/*`) and Jan's model download and delete, on the client API only (never on the peer
endpoint): thin handlers over serving and models.installer."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web

from ..models.installer import Installer, InstallError
from ..protocol.localai import (
    ApplyRequest,
    ApplyResponse,
    AvailableModels,
    DeletedModel,
    GalleryList,
    GalleryMetadata,
    GalleryModel,
    JobList,
    ModelDownload,
    RerankRequest,
)
from ..serving import rerank as reranking
from .errors import APIError
from .replies import json_reply
from .routes import answer_json, parse_body
from .state import NodeState

localai_routes = web.RouteTableDef()


@localai_routes.post("/v1/rerank")
@localai_routes.post("/rerank")
async def rerank(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, RerankRequest)
    return await answer_json(request, "rerank", reranking.rerank, body)


T = TypeVar("T")

model_routes = web.RouteTableDef()
"""Client API only: the peer endpoint never installs or deletes models."""


def _installer(request: web.Request) -> Installer:
    installer = NodeState.of(request).installer
    if installer is None:
        raise APIError(404, "This node does not install models", code="not_supported")
    return installer


async def _call(call: Awaitable[T]) -> T:
    try:
        return await call
    except InstallError as exc:
        raise APIError(exc.status, str(exc), code=exc.code, param=exc.param) from exc


def _job_url(request: web.Request, job_id: str) -> str:
    return f"{request.scheme}://{request.host}/models/jobs/{job_id}"


@model_routes.get("/models/galleries")
async def galleries(request: web.Request) -> web.Response:
    return json_reply(GalleryList(_installer(request).galleries.galleries))


@model_routes.get("/models/available")
async def available(request: web.Request) -> web.Response:
    """Every gallery's models, each marked installed when this node serves a model of that name."""
    installer = _installer(request)
    names = set(NodeState.of(request).manager.names())
    found = await _call(installer.gallery_entries())
    models = [GalleryModel(id=f"{f.gallery.name}@{f.entry.name}", installed=f.entry.name in names, gallery=f.gallery,
                           **f.entry.model_dump(include=set(GalleryMetadata.model_fields)))
              for f in found]
    return json_reply(AvailableModels(models))


@model_routes.post("/models/apply")
async def apply(request: web.Request) -> web.Response:
    body = ApplyRequest.model_validate_json(await request.read())
    job_id, _ = await _call(_installer(request).apply(body))
    return json_reply(ApplyResponse(uuid=job_id, status=_job_url(request, job_id)))


@model_routes.get("/models/jobs")
async def jobs(request: web.Request) -> web.Response:
    return json_reply(JobList(await _installer(request).jobs()))


@model_routes.get("/models/jobs/{uuid}")
async def job(request: web.Request) -> web.Response:
    status = await _installer(request).job(request.match_info["uuid"])
    if status is None:
        raise APIError(404, f"No model job {request.match_info['uuid'][:64]!r}", code="job_not_found")
    return json_reply(status)


@model_routes.post("/models/delete/{name}")
async def delete(request: web.Request) -> web.Response:
    job_id = await _call(_installer(request).delete(request.match_info["name"]))
    return json_reply(ApplyResponse(uuid=job_id, status=_job_url(request, job_id)))


@model_routes.delete("/v1/models/{model}")
async def jan_delete(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    await _call(_installer(request).delete(name))
    return json_reply(DeletedModel(id=name, deleted=True))


@model_routes.get("/v1/models/download/{model}")
@model_routes.post("/v1/models/download/{model}")
async def jan_download(request: web.Request) -> web.Response:
    """Jan's download (GET in its spec, POST in its example): a gallery's model, else the swarm's."""
    name = request.match_info["model"]
    job_id, installed = await _call(_installer(request).apply(ApplyRequest(name=name)))
    return json_reply(ModelDownload(id=name, state="downloaded" if installed else "downloading",
                                    job=None if installed else job_id))
