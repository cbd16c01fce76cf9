"""Protocol models to HTTP bodies, each serialized once by pydantic (no dict in between)."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from pydantic import BaseModel


def json_bytes(model: BaseModel) -> bytes:
    """The model's JSON as ``model_dump_json()`` writes it, as UTF-8 bytes straight from pydantic-core.

    ``model_dump_json`` decodes pydantic-core's bytes into a str that a body must encode
    again; this skips both (a third of the cost of a streamed chunk, bench/chunk_cost.py).
    """
    return model.__pydantic_serializer__.to_json(model)


def json_reply(model: BaseModel, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=json_bytes(model), status=status, headers=headers, content_type="application/json")


def sse_event(model: BaseModel) -> bytes:
    return b"data: " + json_bytes(model) + b"\n\n"


def named_event(model: BaseModel) -> bytes:
    """An SSE event with an `event:` line naming its type (Anthropic's and the Responses API's streams)."""
    return b"event: " + model.type.encode() + b"\ndata: " + json_bytes(model) + b"\n\n"  # type: ignore[attr-defined]
