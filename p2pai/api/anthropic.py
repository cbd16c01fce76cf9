"""Anthropic's Messages API: POST /v1/messages and /v1/messages/count_tokens, with Anthropic's error
shape on these paths (app.py's middleware asks `is_anthropic`). The key may come as `x-api-key`."""

from __future__ import annotations

from aiohttp import web

from ..protocol.anthropic import CountTokensRequest, MessagesRequest
from ..serving import anthropic
from .errors import from_exception
from .replies import named_event
from .routes import dispatch, json_answer, parse_body, stream_or_json
from .sse import StreamFormat
from .state import NodeState

PATHS = ("/v1/messages", "/messages")


def is_anthropic(path: str) -> bool:
    return path.startswith(PATHS)


def _error_event(exc: BaseException) -> bytes:
    return named_event(from_exception(exc).anthropic_body())


STREAM = StreamFormat(named_event, _error_event, b"")
"""message_stop (or an error event) ends an Anthropic stream; there is no [DONE]."""

anthropic_routes = web.RouteTableDef()


@anthropic_routes.post("/v1/messages")
@anthropic_routes.post("/messages")
async def messages(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, MessagesRequest)

    async def local() -> web.StreamResponse:
        served = await NodeState.of(request).serving.model(body.model, "chat")
        return await stream_or_json(request, served, body.stream, lambda: anthropic.create(served, body),
                                    lambda: anthropic.stream(served, body), STREAM)

    return await dispatch(request, body.model, "chat", local)


@anthropic_routes.post("/v1/messages/count_tokens")
@anthropic_routes.post("/messages/count_tokens")
async def count_tokens(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, CountTokensRequest)
    return await dispatch(request, body.model, "chat",
                          json_answer(request, body.model, "chat", anthropic.count_tokens, body))
