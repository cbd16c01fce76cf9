"""The model process's side of its RPC workers.

Each worker gets a Forwarder: a loopback port llama.cpp connects to, tunnelled
through the worker's authenticated relay. The forwarders run on an asyncio
loop in a thread of their own, so the model's thread keeps all of llama.cpp's
compute; registering the endpoints with llama.cpp connects through them at once,
so it must happen on another thread than theirs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from . import native
from .relay import Credentials, Endpoint, Forwarder


def connect_workers(workers: tuple[Endpoint, ...], credentials: Credentials,
                    on_lost: Callable[[str, str], None]) -> None:
    """Start a forwarder per worker and register them with llama.cpp, in `workers` order (the device order).

    `on_lost(peer_id, reason)` runs on the forwarders' thread when a worker fails,
    before llama.cpp sees its connection close (and aborts this process).
    """
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="rpc-forwarders", daemon=True).start()

    async def start() -> list[int]:
        forwarders = [Forwarder(endpoint, credentials, lambda e, reason: on_lost(e.peer_id, reason))
                      for endpoint in workers]
        return [await forwarder.start() for forwarder in forwarders]

    ports = asyncio.run_coroutine_threadsafe(start(), loop).result()
    for port in ports:
        native.register_server(f"127.0.0.1:{port}")
