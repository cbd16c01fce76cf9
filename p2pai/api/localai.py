"""LocalAI's API family: POST /v1/rerank (also /rerank)."""

from __future__ import annotations

from aiohttp import web

from ..protocol.localai import RerankRequest
from ..serving import rerank as reranking
from .routes import dispatch, json_answer, parse_body

localai_routes = web.RouteTableDef()


@localai_routes.post("/v1/rerank")
@localai_routes.post("/rerank")
async def rerank(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, RerankRequest)
    return await dispatch(request, body.model, "rerank", json_answer(request, body.model, "rerank", reranking.rerank,
                                                                     body))
