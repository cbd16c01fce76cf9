"""The HTTP side of a server-sent event stream, shared by the API (which writes
streams) and the router (which relays them)."""

from __future__ import annotations

from .aiohttp_internals import DeferredHeadersResponse

DONE = b"data: [DONE]\n\n"


class EventStream(DeferredHeadersResponse):
    """A streamed response whose headers leave with its first event, in one TCP segment.

    aiohttp's StreamResponse sends its headers alone in prepare(); the client (or the
    entry node relaying the stream) then wakes up twice before it has the first token.
    Response buffers them until the first write; this class asks for the same.
    """
