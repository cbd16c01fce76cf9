"""Incremental decoding of an HTTP/1.1 chunked body.

Kept apart from the connection that reads it so that the decoding state can
move with the body: a stream's relay thread takes it over mid-body (relay.py).
"""

from __future__ import annotations

MAX_LINE = 1024  # a chunk-size line


class ChunkError(ValueError):
    """The body is not valid chunked encoding."""


class Dechunker:
    def __init__(self) -> None:
        self._left = 0  # bytes of the current chunk still to come
        self._partial = b""  # an incomplete chunk-size or trailer line
        self._trailers = False  # the last (empty) chunk was seen

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """The body data in ``data``, and None, or at the body's end the bytes after it (usually b"").

        Returns one piece per call, however many chunks ``data`` holds: the common read holds whole chunks.
        """
        if self._partial:
            data, self._partial = self._partial + data, b""
        pieces = []
        pos, size = 0, len(data)
        while pos < size:
            if self._left:
                end = min(pos + self._left, size)
                pieces.append(data[pos:end])
                self._left -= end - pos
                pos = end
                continue
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                self._partial = data[pos:]
                if len(self._partial) > MAX_LINE:
                    raise ChunkError("a chunk-size line too long")
                break
            line, pos = data[pos:eol], eol + 2
            if self._trailers:
                if not line:  # the empty line after the last chunk and its trailers
                    return _joined(pieces), data[pos:]
            elif line:  # an empty line is the end of a chunk's data
                self._left = _size(line)
                self._trailers = self._left == 0
        return _joined(pieces), None


    def whole(self, data: bytes) -> bytes | None:
        """The data of ``data`` if it is exactly one whole chunk, not the last, starting at a chunk
        boundary: the common read of a stream, which can then be passed on just as it came."""
        if self._left or self._partial or self._trailers or not data.endswith(b"\r\n"):
            return None
        eol = data.find(b"\r\n")
        try:
            size = int(data[:eol], 16)
        except ValueError:
            return None  # an extension, or not a size at all: feed() decides
        if size <= 0 or eol + size + 4 != len(data):
            return None
        return data[eol + 2 : -2]


def _size(line: bytes) -> int:
    try:
        size = int(line.split(b";", 1)[0], 16)
    except ValueError:
        raise ChunkError(f"a bad chunk size {line[:40]!r}") from None
    if size < 0:
        raise ChunkError("a negative chunk size")
    return size


def _joined(pieces: list[bytes]) -> bytes:
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)
