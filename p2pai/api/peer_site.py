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
from collections.abc import Iterable
from typing import Any, cast

from aiohttp import web

from ..aiohttp_internals import RequestHandler, bound_port, new_request_handler, site_backlog, start_site_server
from ..routing.peer_tls import HANDSHAKE_TIMEOUT, TLSSession

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
        self.tls = tls
        self.refusals = refusals
        self._max_per_source = max_per_source
        self._connections: Counter[str] = Counter()

    @property
    def name(self) -> str:
        return f"{'https' if self.tls is not None else 'http'}://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the system's pick for 0)."""
        return bound_port(self)

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        start_site_server(self, await loop.create_server(lambda: _Admitted(self), self._host, self._port,
                                                         backlog=site_backlog(self), reuse_address=True))

    def admit(self, source: str) -> bool:
        if self._connections[source] >= self._max_per_source:
            self.refusals("refused a peer connection from %s: it holds %d already", source, self._max_per_source)
            return False
        self._connections[source] += 1
        return True

    def release(self, source: str) -> None:
        self._connections[source] -= 1
        if not self._connections[source]:
            del self._connections[source]

    def http_handler(self) -> RequestHandler:
        return new_request_handler(self)


class _Admitted(asyncio.Protocol):
    """One accepted connection: admitted by its source, secured, then passed on to aiohttp's handler.

    TLS runs on a memory-BIO session (routing.peer_tls.TLSSession) between the TCP transport and
    the handler, which gets a _Secured transport: asyncio's own TLS transport runs several Python
    layers per write and cost 6-13 µs more per write than a plain one here; this one costs the
    encryption.
    """

    def __init__(self, site: PeerSite) -> None:
        self._site = site
        self._source: str | None = None
        self._raw: asyncio.Transport | None = None
        self._tls: TLSSession | None = None
        self._timeout: asyncio.TimerHandle | None = None
        self._secured: _Secured | None = None
        self._handler: RequestHandler | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        source = str(peer[0]) if peer else "?"
        raw = cast(asyncio.Transport, transport)  # a TCP server's transport
        if not self._site.admit(source):
            raw.abort()
            return
        self._source = source
        self._raw = raw
        if self._site.tls is None:
            self._serve(self._raw)
            return
        self._tls = TLSSession(self._site.tls, server_side=True)
        self._timeout = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._refuse, "TLS handshake too slow")

    def data_received(self, data: bytes) -> None:
        tls = self._tls
        if tls is None:
            if self._handler is not None:
                self._handler.data_received(data)
            return
        if self._raw is None or self._raw.is_closing():
            return  # refused: its close is under way
        tls.incoming.write(data)
        if self._handler is None and not self._handshake():
            return
        while tls.buffered and self._handler is not None:
            try:
                plain = tls.read()
            except ssl.SSLError as exc:
                self._refuse(f"TLS failed ({exc!r})")
                return
            if plain is None:
                break
            if not plain:  # close_notify: the client is done; answer in kind and close
                self._handler.eof_received()
                if self._secured is not None:
                    self._secured.close()
                break
            self._handler.data_received(plain)

    def _handshake(self) -> bool:
        """Advance the handshake; True once it is complete and the connection is served."""
        assert self._tls is not None and self._raw is not None
        try:
            done = self._tls.handshake()
        except ssl.SSLError as exc:  # no member certificate among them
            self._refuse(f"TLS handshake failed ({exc!r})")
            return False
        if self._tls.outgoing.pending:
            self._raw.write(self._tls.outgoing.read())
        if done:
            if self._timeout is not None:
                self._timeout.cancel()
            assert self._site.tls is not None
            self._secured = _Secured(self._raw, self._tls, self._site.tls)
            self._serve(self._secured)
        return done

    def _serve(self, transport: asyncio.Transport) -> None:
        self._handler = self._site.http_handler()
        self._handler.connection_made(transport)

    def _refuse(self, reason: str) -> None:
        assert self._raw is not None and self._tls is not None
        self._site.refusals("refused a peer connection from %s: %s", self._source, reason)
        if self._tls.outgoing.pending:  # the alert that says why
            self._raw.write(self._tls.outgoing.read())
        self._raw.close()

    def eof_received(self) -> bool | None:
        if self._handler is not None:
            self._handler.eof_received()  # aiohttp's handler never keeps the transport half-open
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
        if self._source is not None:
            self._site.release(self._source)
            self._source = None
        if self._handler is not None:
            self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()


PEER_CERTIFICATE = "p2pai_peer_certificate"
"""Extra info of a secured connection: the client's certificate (DER), read once per connection
rather than on every request (a fresh copy from OpenSSL cost about 14 µs per request here)."""


class _Secured(asyncio.Transport):
    """What aiohttp's handler writes to, encrypted on its way to the TCP transport; everything else
    (flow control, reading, addresses) is the TCP transport's."""

    def __init__(self, raw: asyncio.Transport, tls: TLSSession, context: ssl.SSLContext) -> None:
        self._own_extra: dict[str, Any] = {"ssl_object": tls.session, "sslcontext": context,
                                           PEER_CERTIFICATE: tls.peer_certificate()}
        super().__init__(self._own_extra)
        self._raw = raw
        self._tls = tls
        self._closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._own_extra[name] if name in self._own_extra else self._raw.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if data and not self._closing:
            self._raw.write(self._tls.encrypt(data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._raw.write(self._tls.close_notify())
            self._raw.close()

    def abort(self) -> None:
        self._closing = True
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self._raw.is_closing()

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw.get_write_buffer_limits()
