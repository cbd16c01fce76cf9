"""Request traces in LocalAI's shape, as GET /api/traces lists them (api/observe.py).

The last MAX_TRACES requests that do work (every method but GET, HEAD and OPTIONS) are kept in
memory: method, path, headers with their secrets redacted, status, duration, the node that served
each and the hops the router tried. Bodies only with --trace-bodies, at most MAX_BODY_BYTES each.
"""

from __future__ import annotations

import base64
import itertools
import time
from collections import deque
from dataclasses import asdict
from datetime import datetime, timezone
from typing import NamedTuple

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ..aiohttp_internals import body_if_read
from ..protocol.localai import APIExchange, TraceHop, TraceRequest, TraceResponse
from ..routing.peer_auth import NONCE, SIGNATURE
from ..routing.router import FORWARDED, HOPS, Hop

MAX_TRACES = 256
MAX_BODY_BYTES = 64 * 1024
UNTRACED_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Reads of the node's state (the dashboard polls them); every other request is traced."""
REDACTED = "[redacted]"
SECRET_HEADERS = frozenset(name.lower() for name in (
    "Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie", "X-API-Key", SIGNATURE, NONCE))

Headers = tuple[tuple[str, str], ...]


class Trace(NamedTuple):
    """One request as it was recorded: a named tuple, built in about 1 µs (a frozen dataclass of as many
    fields takes 8: recording runs on every request that does work)."""

    id: int
    started: float
    """Seconds since the epoch."""
    seconds: float
    method: str
    path: str
    headers: Headers
    status: int
    response_headers: Headers
    error: str | None
    client_ip: str | None
    user_agent: str | None
    forwarded_by: str | None
    hops: tuple[Hop, ...]
    body: bytes | None
    body_bytes: int
    response_body: bytes | None
    response_bytes: int


class TraceBuffer:
    """The last ``size`` traces, oldest dropped first."""

    def __init__(self, size: int = MAX_TRACES, bodies: bool = False) -> None:
        self.bodies = bodies
        self._traces: deque[Trace] = deque(maxlen=size)
        self._ids = itertools.count(1)

    def record(self, request: web.Request, response: web.StreamResponse | None, seconds: float,
               error: str | None) -> None:
        body = body_if_read(request)
        answer = response.body if isinstance(response, web.Response) else None
        answer = answer if isinstance(answer, bytes) else None
        self._traces.append(Trace(
            id=next(self._ids),
            started=time.time() - seconds,
            seconds=seconds,
            method=request.method,
            path=request.path,
            headers=_redacted(request.headers),
            status=response.status if response is not None else 499,
            response_headers=_redacted(response.headers) if response is not None else (),
            error=error,
            client_ip=request.remote,
            user_agent=request.headers.get("User-Agent"),
            forwarded_by=request.get(FORWARDED),
            hops=tuple(request.get(HOPS, ())),
            body=body[:MAX_BODY_BYTES] if self.bodies and body is not None else None,
            body_bytes=len(body) if body is not None else request.content_length or 0,
            response_body=answer[:MAX_BODY_BYTES] if self.bodies and answer is not None else None,
            response_bytes=len(answer) if answer is not None else (response.body_length if response else 0),
        ))

    def page(self, offset: int, limit: int) -> tuple[list[Trace], int]:
        """Newest first: [offset, offset + limit) (limit 0: all from offset), and how many there are."""
        newest = list(reversed(self._traces))
        return newest[offset:offset + limit if limit else None], len(newest)

    def clear(self) -> None:
        self._traces.clear()


def _redacted(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> Headers:
    """The headers, secrets' values replaced. Most requests carry no secret: asking the multidict for
    each secret name (case-insensitively, in C) spares them the check of every header name."""
    for secret in SECRET_HEADERS:
        if secret in headers:
            return tuple([(name, REDACTED if name.lower() in SECRET_HEADERS else value)
                          for name, value in headers.items()])
    return tuple(headers.items())


def _grouped(headers: Headers) -> dict[str, list[str]]:
    """Go's http.Header: each name with its values."""
    grouped: dict[str, list[str]] = {}
    for name, value in headers:
        grouped.setdefault(name, []).append(value)
    return grouped


def _encoded(body: bytes | None) -> str | None:
    return base64.b64encode(body).decode() if body is not None else None


def exchange(trace: Trace, full: bool) -> APIExchange:
    """A trace as LocalAI shows it; bodies only when ``full``."""
    served_by = next((value for name, value in trace.response_headers if name.lower() == "x-p2pai-served-by"), None)
    return APIExchange(
        id=str(trace.id),
        timestamp=datetime.fromtimestamp(trace.started, timezone.utc).isoformat().replace("+00:00", "Z"),
        duration=int(trace.seconds * 1e9),
        request=TraceRequest(method=trace.method, path=trace.path, headers=_grouped(trace.headers),
                             body=_encoded(trace.body) if full else None,
                             body_truncated=trace.body is not None and len(trace.body) < trace.body_bytes,
                             body_bytes=trace.body_bytes),
        response=TraceResponse(status=trace.status, headers=_grouped(trace.response_headers),
                               body=_encoded(trace.response_body) if full else None,
                               body_truncated=trace.response_body is not None
                               and len(trace.response_body) < trace.response_bytes,
                               body_bytes=trace.response_bytes),
        error=trace.error,
        client_ip=trace.client_ip,
        user_agent=trace.user_agent,
        served_by=served_by,
        forwarded_by=trace.forwarded_by,
        hops=[TraceHop(**asdict(hop)) for hop in trace.hops],
    )
