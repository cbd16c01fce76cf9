"""The parts of aiohttp that p2pai uses beyond its public API, all in this one module.

aiohttp is pinned in setup.cfg; tests/test_aiohttp_internals.py fails loudly when an
upgrade changes any of them.
"""

from __future__ import annotations

import asyncio
from typing import cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

__all__ = ["DeferredHeadersResponse", "RequestHandler", "body_if_read", "bound_port", "new_request_handler",
           "site_backlog", "site_server", "start_site_server"]


class DeferredHeadersResponse(web.StreamResponse):
    """A StreamResponse whose headers wait for its first write and leave with it, in one segment.

    aiohttp's StreamResponse sends its headers alone in prepare() (web.Response buffers them);
    the flag asks for the buffering (aiohttp >= 3.12, private).
    """

    _send_headers_immediately = False


def site_server(site: web.BaseSite) -> asyncio.Server | None:
    """The asyncio server a started site listens with (its real port when it was given 0)."""
    return cast("asyncio.Server | None", site._server)


def bound_port(site: web.BaseSite) -> int:
    """The port a started site listens on: the one asked for, or the system's pick for 0."""
    server = site_server(site)
    assert server is not None and server.sockets, "the site is not started"
    return server.sockets[0].getsockname()[1]


def start_site_server(site: web.BaseSite, server: asyncio.Server) -> None:
    """Make ``server`` the one ``site`` stops and reports, for a site that creates its own."""
    site._server = server


def site_backlog(site: web.BaseSite) -> int:
    return site._backlog


def new_request_handler(site: web.BaseSite) -> RequestHandler:
    """An HTTP protocol instance of the server ``site`` runs, for a connection the site accepted itself."""
    server = site._runner.server
    assert server is not None, "the runner is not set up"
    return server()


def body_if_read(request: web.Request) -> bytes | None:
    """The request's body if a handler read it (aiohttp keeps it), without reading it otherwise:
    a refused request's body is never read."""
    return cast("bytes | None", request._read_bytes)
