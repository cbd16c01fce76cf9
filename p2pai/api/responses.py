"""OpenAI's Responses API: POST /v1/responses; GET (or replay, with `stream=true&starting_after=N`),
cancel and DELETE /v1/responses/{id}, answered by the node that stores the response, wherever the
request arrives (the id names that node; an id naming no known node is asked of every node)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing

from aiohttp import web
from pydantic import BaseModel

from ..protocol import responses as r
from ..routing.forward import PeerUnavailable
from ..routing.router import FORWARDED, NoNodeAvailable
from ..serving.responses import ResponseNotFound, Responses, node_tag, tag_of
from .errors import APIError, from_exception
from .replies import json_reply, named_event
from .routes import dispatch, parse_body, served_headers
from .sse import StreamFormat, send_stream
from .state import NodeState

log = logging.getLogger(__name__)


def _error_event(exc: BaseException) -> bytes:
    error = from_exception(exc)
    return named_event(r.ErrorEvent(sequence_number=-1, code=error.code, message=error.message, param=error.param))


STREAM = StreamFormat(named_event, _error_event, b"")
"""The last event (response.completed, .incomplete, .failed) ends a Responses stream; there is no [DONE]."""

responses_routes = web.RouteTableDef()


@responses_routes.post("/v1/responses")
@responses_routes.post("/responses")
async def create(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, r.ResponsesRequest)

    async def local() -> web.StreamResponse:
        state = NodeState.of(request)
        served = await state.serving.model(body.model, "chat")
        run, events = await state.responses.start(served, body)
        headers = served_headers(served, state)
        if body.stream:
            return await send_stream(request, await anext(events), events, headers, STREAM)
        if not body.background:
            async with aclosing(events):
                async for _ in events:
                    pass
            if run.error is not None:
                raise run.error  # its own status and code, as chat would answer it
        return json_reply(run.response, headers=headers)

    previous = body.previous_response_id
    owner = _owner(request, previous) if previous else None  # the conversation lives there
    return await dispatch(request, body.model, "chat", local, pin=owner)


@responses_routes.get("/v1/responses/{id}")
@responses_routes.get("/responses/{id}")
async def get(request: web.Request) -> web.StreamResponse:
    stream = request.query.get("stream", "false").lower() == "true"
    after = _starting_after(request)

    async def answer(stored: Responses, ident: str) -> web.StreamResponse:
        run = await stored.get(ident)
        if not stream:
            return json_reply(run.response)
        events = run.follow(after)
        try:
            first = await anext(events)
        except StopAsyncIteration:
            raise APIError(400, f"the response has no events after {after}", param="starting_after") from None
        return await send_stream(request, first, events, None, STREAM)

    return await _on_owner(request, answer)


@responses_routes.post("/v1/responses/{id}/cancel")
@responses_routes.post("/responses/{id}/cancel")
async def cancel(request: web.Request) -> web.StreamResponse:
    return await _on_owner(request, lambda stored, ident: _json(stored.cancel(ident)))


@responses_routes.delete("/v1/responses/{id}")
@responses_routes.delete("/responses/{id}")
async def delete(request: web.Request) -> web.StreamResponse:
    return await _on_owner(request, lambda stored, ident: _json(stored.delete(ident)))


async def _json(answer: Awaitable[BaseModel]) -> web.StreamResponse:
    return json_reply(await answer)


def _starting_after(request: web.Request) -> int:
    raw = request.query.get("starting_after", "-1")
    try:
        return max(-1, int(raw))
    except ValueError:
        raise APIError(400, f"starting_after must be an integer, not {raw[:40]!r}", param="starting_after") from None


def _owner(request: web.Request, ident: str) -> str | None:
    """The id of the node whose tag ``ident`` carries, if it is a node of this swarm."""
    state = NodeState.of(request)
    tag = tag_of(ident)
    if tag is None or state.router is None:
        return None
    if tag == state.responses.tag:
        return state.node_id
    return next((node for node in state.router.node_ids() if node_tag(node) == tag), None)


async def _on_owner(request: web.Request, answer: Callable[[Responses, str], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
    """``answer`` about the response the path names, on the node that stores it; with an id naming no
    known node, on the first node that has it (this one, then each peer)."""
    ident = request.match_info["id"]
    state = NodeState.of(request)

    async def local() -> web.StreamResponse:
        return await answer(state.responses, ident)

    router = state.router
    if router is None or FORWARDED in request:
        return await local()
    owner = _owner(request, ident)
    if owner is not None:
        return await router.on_node(request, owner, local)
    try:
        return await local()
    except ResponseNotFound:
        pass
    for node in router.node_ids()[1:]:
        try:
            reply = await router.on_node(request, node, local)
        except (PeerUnavailable, NoNodeAvailable) as exc:
            log.info("could not ask %s for response %s: %s", node, ident, exc)
            continue
        if reply.status != 404:
            return reply
    raise ResponseNotFound(ident)
