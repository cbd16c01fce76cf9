"""What p2pai/aiohttp_internals.py takes from aiohttp beyond its public API still works: this fails
when an aiohttp upgrade changes any of it (aiohttp is pinned in setup.cfg for that reason)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from p2pai.aiohttp_internals import (
    DeferredHeadersResponse,
    RequestHandler,
    body_if_read,
    bound_port,
    new_request_handler,
    site_backlog,
    site_server,
    start_site_server,
)
from ports import free_port


async def _first_write_late(request: web.Request) -> web.StreamResponse:
    response = DeferredHeadersResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    await asyncio.sleep(0.3)
    await response.write(b"first")
    await response.write_eof()
    return response


async def test_deferred_headers_leave_with_the_first_write() -> None:
    app = web.Application()
    app.router.add_get("/", _first_write_late)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        try:
            nothing = await asyncio.wait_for(reader.read(1), 0.15)
        except TimeoutError:
            nothing = b""
        assert nothing == b"", "the headers left before the first write"
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        await runner.cleanup()


class _OwnServerSite(web.BaseSite):
    """As api/peer_site.PeerSite does: a site that accepts connections itself, then hands them to aiohttp."""

    def __init__(self, runner: web.BaseRunner, port: int) -> None:
        super().__init__(runner)
        self.port = port
        self.handlers: list[RequestHandler] = []

    @property
    def name(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        await super().start()
        server = await asyncio.get_running_loop().create_server(self._protocol, "127.0.0.1", self.port,
                                                                 backlog=site_backlog(self))
        start_site_server(self, server)

    def _protocol(self) -> RequestHandler:
        handler = new_request_handler(self)
        self.handlers.append(handler)
        return handler


async def test_a_site_with_its_own_server_serves_and_stops() -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = _OwnServerSite(runner, free_port())
    await site.start()
    try:
        server = site_server(site)
        assert isinstance(server, asyncio.Server) and server.sockets[0].getsockname()[1] == site.port
        assert isinstance(site_backlog(site), int)
        assert bound_port(site) == site.port
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello")
        assert len(site.handlers) == 1 and isinstance(site.handlers[0], RequestHandler)
        writer.close()
    finally:
        await runner.cleanup()
    assert not server.is_serving()  # the runner stopped the server the site made its own


async def test_the_bound_port_of_a_site_given_port_0() -> None:
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = bound_port(site)
        assert port > 0
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
    finally:
        await runner.cleanup()


async def test_the_body_of_a_request_is_known_only_once_a_handler_read_it() -> None:
    seen: list[bytes | None] = []

    async def reads(request: web.Request) -> web.Response:
        await request.read()
        seen.append(body_if_read(request))
        return web.Response()

    async def ignores(request: web.Request) -> web.Response:
        seen.append(body_if_read(request))
        return web.Response()

    app = web.Application()
    app.router.add_post("/reads", reads)
    app.router.add_post("/ignores", ignores)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        for path in ("/reads", "/ignores"):
            reader, writer = await asyncio.open_connection("127.0.0.1", bound_port(site))
            writer.write(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
                         "hello".encode())
            assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")
            writer.close()
    finally:
        await runner.cleanup()
    assert seen == [b"hello", None]
