"""llama.cpp's RPC server on 127.0.0.1, as its own process.

    python -m p2pai.backends.rpc.server --port P [--threads N] [--cache-dir D]

It has no authentication, so it never binds anything but loopback: members
reach it only through the worker's relay. It is a separate process because a
malformed graph aborts llama.cpp; the worker restarts it (see RpcServerProcess).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import struct
import sys
import threading

from ..orphan import die_with_parent
from . import native

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
RPC_CMD_HELLO = 14
RPC_CONN_CAPS_SIZE = 24
START_TIMEOUT = 20.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m p2pai.backends.rpc.server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache-dir")
    args = parser.parse_args(argv)
    die_with_parent()
    # The C server never returns; a daemon thread lets SIGTERM end the process.
    thread = threading.Thread(
        target=native.serve_forever, args=(HOST, args.port, args.threads, args.cache_dir), daemon=True
    )
    thread.start()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while thread.is_alive() and not stop.wait(0.2):
        pass
    # Not sys.exit: interpreter teardown and ggml's static destructors would run beside the
    # C server thread, which may be mid-graph. The server keeps nothing that needs flushing.
    sys.stdout.flush()
    os._exit(0 if stop.is_set() else 1)  # 1: the server returned, e.g. the port was taken


async def rpc_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    """Send llama.cpp's HELLO and return the server's protocol version "MAJOR.MINOR.PATCH"."""
    writer.write(struct.pack("<BQ", RPC_CMD_HELLO, RPC_CONN_CAPS_SIZE) + bytes(RPC_CONN_CAPS_SIZE))
    await writer.drain()
    (size,) = struct.unpack("<Q", await reader.readexactly(8))
    if size != 4 + RPC_CONN_CAPS_SIZE:
        raise ConnectionError(f"unexpected RPC hello reply of {size} bytes")
    major, minor, patch = (await reader.readexactly(size))[:3]
    return f"{major}.{minor}.{patch}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class RpcServerProcess:
    """Keeps one RPC server process running on a loopback port, restarting it if it dies."""

    def __init__(self, threads: int, cache_dir: str | None) -> None:
        self.threads = threads
        self.cache_dir = cache_dir
        self.port = 0
        self.protocol = ""
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the server and wait until it answers HELLO (a taken port means a new one)."""
        last_error: Exception | None = None
        for _ in range(5):
            self.port = _free_port()
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "p2pai.backends.rpc.server", "--port", str(self.port),
                "--threads", str(self.threads), *(["--cache-dir", self.cache_dir] if self.cache_dir else []),
                stdout=asyncio.subprocess.DEVNULL,
            )
            try:
                self.protocol = await asyncio.wait_for(self._await_hello(), START_TIMEOUT)
                return
            except (OSError, asyncio.TimeoutError) as exc:
                last_error = exc
                await self.stop()
        raise RuntimeError(f"llama.cpp's RPC server did not start: {last_error!r}")

    async def _await_hello(self) -> str:
        assert self._process is not None
        while True:
            if self._process.returncode is not None:
                raise OSError(f"the RPC server exited with {self._process.returncode}")
            try:
                reader, writer = await asyncio.open_connection(HOST, self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            try:
                return await rpc_hello(reader, writer)
            finally:
                writer.close()

    async def supervise(self) -> None:
        """Restart the server whenever it exits; runs until cancelled."""
        while True:
            assert self._process is not None
            code = await self._process.wait()
            log.warning("llama.cpp's RPC server exited with %s; restarting it", code)
            self.restarts += 1
            await asyncio.sleep(0.5)
            await self.start()

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except asyncio.TimeoutError:
            process.kill()
            with contextlib.suppress(ProcessLookupError):
                await process.wait()


if __name__ == "__main__":
    main()
