"""Protocol models to HTTP bodies, each serialized once by pydantic (no dict in between)."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from pydantic import BaseModel


def json_reply(model: BaseModel, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=model.model_dump_json().encode(), status=status, headers=headers,
                        content_type="application/json")


def sse_event(model: BaseModel) -> bytes:
    return b"data: " + model.model_dump_json().encode() + b"\n\n"
