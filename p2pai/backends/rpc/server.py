"""llama.cpp's RPC server on 127.0.0.1, as its own process, in a network of its own.

    python -m p2pai.backends.rpc.server --port P --control FD [--threads N] [--cache-dir D] [--device NAME]
                                        [--shared-network]

It has no authentication, so it never binds anything but loopback, and where
the kernel allows unprivileged user namespaces (most Linux systems) not even
the machine's loopback: the process first moves into new user and network
namespaces, whose loopback no other process can reach. The worker's relay gets
its connections from this process: over the control socket FD (a private
socketpair) it asks, this process connects a TCP socket to the server inside
its namespace and passes it back (SCM_RIGHTS); a socket keeps the namespace it
was made in. Where namespaces are not allowed it says so and the server
listens on the machine's loopback (any local process can reach it then).

It is a separate process because a malformed graph aborts llama.cpp; the
worker restarts it (see RpcServerProcess).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import socket
import struct
import sys
import threading

from ..orphan import die_with_parent

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
RPC_CMD_HELLO = 14
RPC_CONN_CAPS_SIZE = 24
START_TIMEOUT = 20.0
CONNECT_TIMEOUT = 5.0
# Control socket messages (SOCK_SEQPACKET: one message per send).
ISOLATED, SHARED = b"I", b"S"  # the first message: the server's network, then why not isolated
CONNECT = b"C"  # the relay asks for a connection...
SOCKET, FAILED = b"K", b"E"  # ...and gets one (with the descriptor) or the reason it failed
ISOLATION_FAILED = 3  # exit status: namespaces were entered but loopback could not be brought up

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_SIOCSIFFLAGS = 0x8914
_IFF_UP, _IFF_LOOPBACK, _IFF_RUNNING = 0x1, 0x8, 0x40


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m p2pai.backends.rpc.server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control", type=int, required=True, help="the worker's end of a SOCK_SEQPACKET pair")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache-dir")
    parser.add_argument("--device", help="ggml's name of the device to serve (default: the CPU)")
    parser.add_argument("--shared-network", action="store_true", help="stay in the machine's network namespace")
    args = parser.parse_args(argv)
    die_with_parent()
    control = socket.socket(fileno=args.control)
    # Before any thread starts (and before ggml is loaded): unshare refuses a threaded process.
    problem = "--shared-network" if args.shared_network else isolate_network()
    control.send(ISOLATED if problem is None else SHARED + problem.encode()[:200])
    from . import native

    # The C server never returns; a daemon thread lets SIGTERM end the process.
    thread = threading.Thread(
        target=native.serve_forever, args=(HOST, args.port, args.threads, args.cache_dir, args.device), daemon=True
    )
    thread.start()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    _hand_out_connections(control, args.port, thread, stop)
    # Not sys.exit: interpreter teardown and ggml's static destructors would run beside the
    # C server thread, which may be mid-graph. The server keeps nothing that needs flushing.
    sys.stdout.flush()
    os._exit(0 if stop.is_set() else 1)  # 1: the server returned (e.g. the port was taken) or the worker left


def isolate_network() -> str | None:
    """Move this (single-threaded) process into new user and network namespaces and bring their
    loopback up: None when done, else why not (the process then stays where it was)."""
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        return f"unshare: {os.strerror(ctypes.get_errno())}"
    # Keep this user's own ids inside (files in the cache dir stay its own); optional.
    for path, line in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with contextlib.suppress(OSError), open(f"/proc/self/{path}", "w") as file:
            file.write(line)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            fcntl.ioctl(probe, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", _IFF_UP | _IFF_LOOPBACK | _IFF_RUNNING))
    except OSError as exc:  # the namespaces cannot be left again: let the worker start us without them
        print(f"cannot bring up loopback in the RPC server's network namespace: {exc}", file=sys.stderr)
        os._exit(ISOLATION_FAILED)
    return None


def _hand_out_connections(control: socket.socket, port: int, thread: threading.Thread, stop: threading.Event) -> None:
    """Answer the worker's CONNECT requests until it goes away, the server ends or a signal comes."""
    control.settimeout(0.2)
    while thread.is_alive() and not stop.is_set():
        try:
            request = control.recv(16)
        except TimeoutError:
            continue
        except OSError:
            return
        if not request:
            return  # the worker is gone
        try:
            connection = socket.create_connection((HOST, port), timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            control.send(FAILED + str(exc).encode()[:200])
            continue
        with connection:
            connection.settimeout(None)
            socket.send_fds(control, [SOCKET], [connection.fileno()])


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
    """A port for the server (in a namespace of its own any would do; shared, it must be free)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class RpcServerProcess:
    """Keeps one RPC server process running, restarting it if it dies; `connect()` is the only
    way to reach it (see the module docstring)."""

    def __init__(self, threads: int, cache_dir: str | None, isolate: bool = True, device: str | None = None) -> None:
        """``isolate=False`` skips the network namespace (what happens where namespaces are not allowed);
        ``device``: ggml's name of the device to serve (default: the CPU)."""
        self.threads = threads
        self.cache_dir = cache_dir
        self.device = device
        self.port = 0
        self.protocol = ""
        self.restarts = 0
        self.isolated = False
        """Whether the server runs in a network namespace of its own."""
        self._shared = not isolate  # also set when isolation failed once: no second try
        self._last_exit: int | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._control: socket.socket | None = None
        self._asking = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Start the server and wait until it answers HELLO (a taken port means a new one)."""
        last_error: Exception | None = None
        for _ in range(5):
            self.port = _free_port()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                self._process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "p2pai.backends.rpc.server", "--port", str(self.port),
                    "--control", str(theirs.fileno()), "--threads", str(self.threads),
                    *(["--cache-dir", self.cache_dir] if self.cache_dir else []),
                    *(["--device", self.device] if self.device else []),
                    *(["--shared-network"] if self._shared else []),
                    stdout=asyncio.subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                )
            finally:
                theirs.close()
            ours.setblocking(False)
            self._control = ours
            try:
                await asyncio.wait_for(self._learn_network(), START_TIMEOUT)
                self.protocol = await asyncio.wait_for(self._await_hello(), START_TIMEOUT)
                return
            except (OSError, asyncio.TimeoutError) as exc:
                last_error = exc
                await self.stop()
                if self._last_exit == ISOLATION_FAILED:
                    self._shared = True
        raise RuntimeError(f"llama.cpp's RPC server did not start: {last_error!r}")

    async def _learn_network(self) -> None:
        message, _ = await self._receive()
        self.isolated = message == ISOLATED
        if not self.isolated:
            log.warning("llama.cpp's RPC server shares this machine's loopback (%s): any local process can reach "
                        "it; on Linux, allow unprivileged user namespaces to isolate it",
                        message[1:].decode(errors="replace") or "no namespaces")

    async def connect(self) -> socket.socket:
        """A new TCP connection to the server (made inside its namespace); OSError if there is none."""
        async with self._asking:
            control = self._control
            if control is None:
                raise ConnectionError("the RPC server is not running")
            await asyncio.get_running_loop().sock_sendall(control, CONNECT)
            try:
                message, fds = await asyncio.wait_for(self._receive(), CONNECT_TIMEOUT * 2)
            except asyncio.TimeoutError:  # a late answer would pair with the next request: start over
                if self._process is not None and self._process.returncode is None:
                    self._process.kill()  # supervise() restarts it
                raise ConnectionError("the RPC server process does not answer") from None
        if message != SOCKET or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise ConnectionError(f"the RPC server cannot be reached: {message[1:].decode(errors='replace')}")
        return socket.socket(fileno=fds[0])

    async def _receive(self) -> tuple[bytes, list[int]]:
        """The next control message and the descriptors it carries; ConnectionError when the server is gone."""
        control = self._control
        if control is None:
            raise ConnectionError("the RPC server is not running")
        loop = asyncio.get_running_loop()
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(control, 256, 1)
            except BlockingIOError:
                readable: asyncio.Future[None] = loop.create_future()

                def wake(readable: asyncio.Future[None] = readable) -> None:
                    if not readable.done():
                        readable.set_result(None)

                loop.add_reader(control.fileno(), wake)
                try:
                    await readable
                finally:
                    loop.remove_reader(control.fileno())
                continue
            if not message:
                raise ConnectionError("the RPC server process ended")
            return message, fds

    async def _await_hello(self) -> str:
        while True:
            if self._process is None or self._process.returncode is not None:
                raise OSError("the RPC server exited")
            try:
                sock = await self.connect()
            except ConnectionError:
                await asyncio.sleep(0.05)
                continue
            reader, writer = await asyncio.open_connection(sock=sock)
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
        control, self._control = self._control, None
        if control is not None:
            control.close()
        if process is None:
            return
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except asyncio.TimeoutError:
                process.kill()
                with contextlib.suppress(ProcessLookupError):
                    await process.wait()
        self._last_exit = process.returncode


if __name__ == "__main__":
    main()
