"""Server-sent event streams: OpenAI's chat format (data only, ended by [DONE]) and the named
events of the other families (Anthropic's, the Responses API's), which end with their last event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass

from aiohttp import web
from pydantic import BaseModel

from ..event_stream import DONE, EventStream
from .errors import error_event
from .replies import sse_event


@dataclass(frozen=True)
class StreamFormat:
    event: Callable[[BaseModel], bytes]
    error: Callable[[BaseException], bytes]
    """The event that reports a failure after the stream began."""
    end: bytes
    """Sent after the last event (OpenAI's [DONE]); empty when the last event says it all."""


OPENAI = StreamFormat(sse_event, error_event, DONE)

SEND_TIMEOUT = 60.0
"""Seconds one event may wait for the client to read: a client that stopped reading (its window
full for that long) is let go, with its generation, instead of holding them forever."""


async def send_stream(request: web.Request, first: BaseModel, rest: AsyncIterator[BaseModel],
                      headers: dict[str, str] | None = None, form: StreamFormat = OPENAI) -> web.StreamResponse:
    """Write each event as soon as it exists; end with the format's end ([DONE]), after an error
    event if generation failed."""
    response = EventStream(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **(headers or {}),
        }
    )
    await response.prepare(request)
    async with aclosing(_events(first, rest, form)) as events:
        async for data in events:
            await _send(response, data)
    if form.end:
        await _send(response, form.end)
    async with asyncio.timeout(SEND_TIMEOUT):
        await response.write_eof()
    return response


async def _events(first: BaseModel, rest: AsyncIterator[BaseModel], form: StreamFormat
                  ) -> AsyncGenerator[bytes, None]:
    """The events as bytes; a failure of generation becomes an error event. Closing this closes ``rest``
    (its generation stops when the client is gone)."""
    encode = form.event
    yield encode(first)
    try:
        async for item in rest:
            yield encode(item)
    except Exception as exc:  # noqa: BLE001 - reported to the client in the stream
        yield form.error(exc)
    finally:
        close = getattr(rest, "aclose", None)
        if close is not None:
            await close()


async def _send(response: web.StreamResponse, data: bytes) -> None:
    try:
        async with asyncio.timeout(SEND_TIMEOUT):
            await response.write(data)
    except TimeoutError:
        raise ConnectionResetError(f"the client read nothing for {SEND_TIMEOUT:.0f} s") from None
