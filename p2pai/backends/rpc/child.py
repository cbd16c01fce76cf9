"""The process that runs one RPC-backed model: `python -m p2pai.backends.rpc.child FD`.

llama.cpp aborts its whole process when an RPC worker dies, so the node keeps
such a model here and talks to it over the socket FD (see engine.py). This
process starts one Forwarder per worker, registers them with llama.cpp, loads
the model with the ordinary LlamaEngine and serves requests until the parent
says close or goes away. When a forwarder loses its worker it tells the parent
first, so the parent can name the worker before llama.cpp aborts this process.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any

from ..base import BackendError
from ...malloc_tuning import tune_malloc
from ..llama import LlamaEngine, LlamaSettings
from .relay import Credentials, Endpoint, Forwarder

_HEADER = struct.Struct("!I")


@dataclass(frozen=True)
class ChildSpec:
    name: str
    settings: LlamaSettings
    workers: tuple[Endpoint, ...]
    credentials: Credentials


class Channel:
    """Length-prefixed pickles over a socket between the node and its own child process."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def send(self, *message: Any) -> None:
        data = pickle.dumps(message)
        self._writer.write(_HEADER.pack(len(data)) + data)
        await self._writer.drain()

    async def receive(self) -> tuple[Any, ...]:
        """The next message; raises asyncio.IncompleteReadError when the other side is gone."""
        (size,) = _HEADER.unpack(await self._reader.readexactly(_HEADER.size))
        return pickle.loads(await self._reader.readexactly(size))

    def close(self) -> None:
        self._writer.close()


def encode_error(exc: BaseException) -> tuple[type, str, dict[str, Any]]:
    """Backend errors keep their type and fields (code, retry_after...) across the process boundary."""
    if isinstance(exc, BackendError):
        return type(exc), str(exc), dict(vars(exc))
    return BackendError, f"{type(exc).__name__}: {exc}", {}


def decode_error(encoded: tuple[type, str, dict[str, Any]]) -> BackendError:
    cls, message, attrs = encoded
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(attrs)
    return exc


async def serve(sock: socket.socket) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    channel = Channel(reader, writer)
    _, spec = await channel.receive()

    async def lost(endpoint: Endpoint, reason: str) -> None:
        await channel.send("lost", endpoint.peer_id, reason)

    forwarders = [Forwarder(endpoint, spec.credentials, lost) for endpoint in spec.workers]
    endpoints = [f"127.0.0.1:{await forwarder.start()}" for forwarder in forwarders]
    try:
        from . import native

        # add_server connects at once, through a forwarder served by this loop: not on the loop thread.
        await asyncio.to_thread(lambda: [native.register_server(endpoint) for endpoint in endpoints])
        engine = await LlamaEngine.load(spec.name, spec.settings)
    except Exception as exc:
        await channel.send("load_failed", encode_error(exc))
        return
    await channel.send(
        "ready",
        {
            "metadata": engine.metadata,
            "n_ctx": engine.n_ctx,
            "bos_text": engine.bos_text,
            "eos_text": engine.eos_text,
            "fim": engine.fim_tokens(),
        },
    )
    tasks: dict[int, asyncio.Task[None]] = {}

    async def run(request_id: int, kind: str, payload: Any) -> None:
        try:
            if kind == "generate":
                async for chunk in engine.generate(payload):
                    await channel.send("chunk", request_id, chunk)
                result = None
            else:
                method, args = payload
                result = await getattr(engine, method)(*args)
            await channel.send("done", request_id, result, engine.stats().decode_tps)
        except asyncio.CancelledError:
            await channel.send("done", request_id, None, engine.stats().decode_tps)
        except Exception as exc:
            await channel.send("error", request_id, encode_error(exc))
        finally:
            tasks.pop(request_id, None)

    while True:
        try:
            message = await channel.receive()
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the node is gone
        if message[0] == "close":
            await engine.close()
            return
        if message[0] == "cancel":
            task = tasks.get(message[1])
            if task is not None:
                task.cancel()
            continue
        kind, request_id, payload = message
        tasks[request_id] = asyncio.create_task(run(request_id, kind, payload))


def main() -> None:
    tune_malloc()  # this process relays llama.cpp RPC messages: about 9 reads per token
    sock = socket.socket(fileno=int(sys.argv[1]))
    asyncio.run(serve(sock))
    # Skip interpreter teardown: freeing a model whose worker died aborts llama.cpp,
    # and the node has nothing more to learn from this process.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
