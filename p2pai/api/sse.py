"""Server-sent events in OpenAI's streaming format."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from pydantic import BaseModel

from ..event_stream import DONE, EventStream
from .errors import error_event
from .replies import sse_event


async def send_stream(request: web.Request, first: BaseModel, rest: AsyncIterator[BaseModel],
                      headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Write each event as soon as it exists; end with [DONE], or an error event if generation failed."""
    response = EventStream(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **(headers or {}),
        }
    )
    await response.prepare(request)
    await response.write(sse_event(first))
    try:
        async for item in rest:
            await response.write(sse_event(item))
    except (ConnectionResetError, ConnectionError):
        raise
    except Exception as exc:  # noqa: BLE001 - reported to the client in the stream
        await response.write(error_event(exc))
    await response.write(DONE)
    await response.write_eof()
    return response
