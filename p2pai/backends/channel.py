"""The wire between a node and one of its model processes: length-prefixed pickles on a socketpair.

Both ends are this program's own processes (the node starts the child and hands
it one end of a socketpair), so pickle carries the backend types as they are.
Nothing from the network is unpickled: requests reach the child as the node's
own dataclasses, already validated. A decode step sends one message for all of
its sequences, never one per token per stream.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from .base import BackendError

_HEADER = struct.Struct("!I")
MAX_MESSAGE = 1 << 30

Message = tuple[Any, ...]
EncodedError = tuple[type[BackendError], str, dict[str, Any]]


def encode(message: Message) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def encode_error(exc: BaseException) -> EncodedError:
    """Backend errors keep their type and fields (code, param, retry_after...) across the boundary."""
    if isinstance(exc, BackendError):
        return type(exc), str(exc), dict(vars(exc))
    return BackendError, f"{type(exc).__name__}: {exc}", {}


def decode_error(encoded: EncodedError) -> BackendError:
    cls, message, attrs = encoded
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(attrs)
    return exc


class MessageReader(asyncio.Protocol):
    """Node side: each whole message goes to `on_message` from the callback that completed it."""

    def __init__(self, on_message: Callable[[Message], None], on_lost: Callable[[], None]) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        end = len(buffer)
        while end - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, start)
            if end - start - _HEADER.size < size:
                break
            body = start + _HEADER.size
            message = pickle.loads(memoryview(buffer)[body : body + size])
            start = body + size
            self._on_message(message)
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost()

    def send(self, *message: Any) -> None:
        """Queue a message for the child; never blocks (messages to the child are small)."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the model process is gone")
        self.transport.write(encode(message))


class BlockingChannel:
    """Child side: blocking reads on one thread, whole-message writes from any thread."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self._sock = sock
        self._file = sock.makefile("rb")
        self._lock = threading.Lock()

    def send(self, *message: Any) -> None:
        data = encode(message)
        with self._lock:
            self._sock.sendall(data)

    def receive(self) -> Message:
        """The next message; EOFError once the node is gone."""
        header = self._file.read(_HEADER.size)
        if len(header) < _HEADER.size:
            raise EOFError("the node closed the channel")
        (size,) = _HEADER.unpack(header)
        if size > MAX_MESSAGE:
            raise EOFError(f"a message of {size} bytes")
        body = self._file.read(size)
        if len(body) < size:
            raise EOFError("the node closed the channel")
        return pickle.loads(body)

    def receive_or_close(self) -> Message:
        """The next message; ("close",) once the node is gone, so that a child ends as when told to."""
        try:
            return self.receive()
        except (EOFError, OSError):
            return ("close",)
