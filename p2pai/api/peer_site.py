"""Where the peer endpoint listens: connections counted per source address, then TLS, then HTTP.

aiohttp's TCPSite would hand every accepted connection to TLS and HTTP at once.
Here a source that already holds MAX_PER_SOURCE connections has its next one
closed before any handshake, a handshake must finish within HANDSHAKE_TIMEOUT,
and only then does aiohttp's request handler see the connection.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter
from typing import cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..routing.peer_tls import HANDSHAKE_TIMEOUT

log = logging.getLogger(__name__)

MAX_PER_SOURCE = 128
"""Connections one address may hold at once: above what an entry node keeps open to one peer
(a request in flight or an idle pooled connection each, and a node queues at most 64 by default)."""


class RefusalLog:
    """Warnings about refused connections and requests: at most ``burst`` per ``interval`` seconds,
    so that a flood of bad requests cannot flood the log; the lines left out are counted in the next."""

    def __init__(self, logger: logging.Logger, burst: int = 10, interval: float = 60.0) -> None:
        self._logger = logger
        self._burst = burst
        self._interval = interval
        self._window = -interval
        self._logged = 0
        self._dropped = 0

    def __call__(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._window >= self._interval:
            self._window, self._logged = now, 0
        if self._logged >= self._burst:
            self._dropped += 1
            return
        self._logged += 1
        if self._dropped:
            message += " (%d similar refusals not logged)"
            args = (*args, self._dropped)
            self._dropped = 0
        self._logger.warning(message, *args)


class PeerSite(web.BaseSite):
    """A TCP site for the peer endpoint; ``tls`` None is the measurement-only plaintext mode."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, tls: ssl.SSLContext | None,
                 refusals: RefusalLog, max_per_source: int = MAX_PER_SOURCE) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._tls = tls
        self._refusals = refusals
        self._max_per_source = max_per_source
        self._connections: Counter[str] = Counter()
        self._handshakes: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return f"{'https' if self._tls is not None else 'http'}://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the system's pick for 0)."""
        assert self._server is not None
        return cast(asyncio.Server, self._server).sockets[0].getsockname()[1]

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Admitted(self), self._host, self._port,
                                                backlog=self._backlog, reuse_address=True)

    async def stop(self) -> None:
        for task in list(self._handshakes):
            task.cancel()
        await super().stop()

    def admit(self, source: str) -> bool:
        if self._connections[source] >= self._max_per_source:
            self._refusals("refused a peer connection from %s: it holds %d already", source, self._max_per_source)
            return False
        self._connections[source] += 1
        return True

    def release(self, source: str) -> None:
        self._connections[source] -= 1
        if not self._connections[source]:
            del self._connections[source]

    def secure(self, connection: _Admitted, transport: asyncio.Transport, source: str) -> None:
        """Run the TLS handshake, then hand the connection to HTTP."""
        assert self._tls is not None
        task = asyncio.get_running_loop().create_task(self._handshake(connection, transport, self._tls, source))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, connection: _Admitted, transport: asyncio.Transport, tls: ssl.SSLContext,
                         source: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            secured = await loop.start_tls(transport, connection, tls, server_side=True,
                                           ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except OSError as exc:  # ssl.SSLError, a timeout (ConnectionAbortedError), a reset
            self._refusals("refused a peer connection from %s: TLS handshake failed (%r)", source, exc)
            connection.release()
            return
        except BaseException:
            connection.release()
            raise
        assert secured is not None
        connection.serve(secured)

    def http_handler(self) -> RequestHandler:
        server = self._runner.server
        assert server is not None
        return server()


class _Admitted(asyncio.Protocol):
    """One accepted connection: admitted by its source, secured, then passed through to aiohttp's handler.

    Over TLS this is also the TLS layer's application protocol: what arrives between the end of the
    handshake and serve() is held, then replayed to the handler.
    """

    def __init__(self, site: PeerSite) -> None:
        self._site = site
        self._source: str | None = None
        self._handler: RequestHandler | None = None
        self._early: list[bytes] = []
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        source = str(peer[0]) if peer else "?"
        if not self._site.admit(source):
            transport.abort()
            return
        self._source = source
        stream = cast(asyncio.Transport, transport)
        if self._site._tls is None:
            self.serve(stream)
        else:
            stream.pause_reading()  # until the TLS layer takes the connection over
            self._site.secure(self, stream, source)

    def serve(self, transport: asyncio.Transport) -> None:
        if transport.is_closing():
            return  # lost between the handshake and now: connection_lost() has released it
        handler = self._handler = self._site.http_handler()
        handler.connection_made(transport)
        for data in self._early:
            handler.data_received(data)
        self._early.clear()
        if self._eof:
            handler.eof_received()

    def release(self) -> None:
        if self._source is not None:
            self._site.release(self._source)
            self._source = None

    def data_received(self, data: bytes) -> None:
        if self._handler is not None:
            self._handler.data_received(data)
        else:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        if self._handler is not None:
            return self._handler.eof_received()
        self._eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()
        if self._handler is not None:
            self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()
