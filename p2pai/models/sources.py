"""Sources of a file's chunks besides peers: HTTP(S) servers (Range requests) and the pieces of a
built-in model on this machine."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import aiohttp

from .fetch import SourceError, SourceGone

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=60.0)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_GONE = frozenset({401, 403, 404, 410, 416})


class HttpSource:
    """A file on an HTTP(S) server that answers Range requests (as web servers and CDNs do)."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.label = url
        self._session = session

    async def size(self) -> int:
        """The file's size, from the answer to a one-byte range request."""
        try:
            async with self._session.get(self.url, headers={"Range": "bytes=0-0"}, timeout=HTTP_TIMEOUT) as reply:
                if reply.status != 206:
                    raise SourceGone(f"{self.url} answered {reply.status} to a range request" if reply.status != 200
                                     else f"{self.url} does not answer range requests (needed to resume)")
                match = _CONTENT_RANGE.fullmatch(reply.headers.get("Content-Range", ""))
                if match is None or match.group(3) == "*":
                    raise SourceGone(f"{self.url} gives no size (Content-Range)")
                return int(match.group(3))
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise SourceGone(f"cannot reach {self.url}: {exc!r}") from exc

    async def read(self, offset: int, length: int) -> bytes:
        end = offset + length - 1
        try:
            async with self._session.get(self.url, headers={"Range": f"bytes={offset}-{end}"},
                                         timeout=HTTP_TIMEOUT) as reply:
                if reply.status in _GONE:
                    raise SourceGone(f"answered {reply.status}")
                if reply.status != 206:
                    raise SourceError(f"answered {reply.status}")
                match = _CONTENT_RANGE.fullmatch(reply.headers.get("Content-Range", ""))
                if match is None or (int(match.group(1)), int(match.group(2))) != (offset, end):
                    raise SourceGone(f"answered another range ({reply.headers.get('Content-Range')})")
                return await reply.content.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise SourceError(f"the answer ended after {len(exc.partial)} of {length} bytes") from exc
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise SourceError(repr(exc)) from exc

    async def close(self) -> None:
        """The session is the installer's."""


class PiecesSource:
    """A built-in model's files on this machine, read as one file."""

    label = "built-in package"

    def __init__(self, parts: list[Path]) -> None:
        self._parts = [(path, path.stat().st_size) for path in parts]

    async def read(self, offset: int, length: int) -> bytes:
        try:
            return await asyncio.to_thread(self._read, offset, length)
        except OSError as exc:
            raise SourceGone(str(exc)) from exc

    def _read(self, offset: int, length: int) -> bytes:
        pieces = []
        for path, size in self._parts:
            if offset >= size:
                offset -= size
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                piece = os.pread(fd, min(length, size - offset), offset)
            finally:
                os.close(fd)
            pieces.append(piece)
            length -= len(piece)
            offset = 0
            if not length:
                break
        return b"".join(pieces)

    async def close(self) -> None:
        """Nothing is kept open."""
