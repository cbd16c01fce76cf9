"""Anthropic's Messages API: POST /v1/messages and /v1/messages/count_tokens, with Anthropic's error
shape on these paths (app.py's middleware asks `is_anthropic`). The key may come as `x-api-key`."""

from __future__ import annotations

from aiohttp import web

from ..protocol.anthropic import CountTokensRequest, MessagesRequest
from ..serving import anthropic
from .errors import from_exception
from .replies import named_event
from .routes import answer_json, answer_streamable, parse_body
from .sse import StreamFormat

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
    return await answer_streamable(request, "chat", anthropic.create, anthropic.stream, body, STREAM)


@anthropic_routes.post("/v1/messages/count_tokens")
@anthropic_routes.post("/messages/count_tokens")
async def count_tokens(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, CountTokensRequest)
    return await answer_json(request, "chat", anthropic.count_tokens, body)
