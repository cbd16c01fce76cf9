"""Real `p2pai worker` processes on 127.0.0.1, and the node's view of them through an overlay."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from p2pai.backends.rpc.workers import WorkerInfo
from p2pai.identity import Identity
from p2pai.swarm.view import SwarmNode
from p2pai.token import derive_keys, parse_token
from ports import free_port

ROOT = Path(__file__).parent.parent


class WorkerProcess:
    """One worker; its JSON status lines are collected by a reader thread."""

    def __init__(self, token: str, data_dir: Path, name: str, memory_mb: int = 4096, extra: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.p2p_port = free_port()
        self.statuses: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self.stderr_path = data_dir.parent / f"{name}.stderr"
        command = [sys.executable, "-m", "p2pai", "worker", "--token", token, "--data-dir", str(data_dir),
                   "--p2p-listen", f"/ip4/127.0.0.1/tcp/{self.p2p_port}", "--no-mdns", "--name", name,
                   "--threads", "1", "--memory", str(memory_mb), "--log-level", "warning", *extra]
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT,
                                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with self._changed:
                self.statuses.append(json.loads(raw))
                self._changed.notify_all()

    def wait_status(self, predicate=lambda status: True, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for status in reversed(self.statuses):
                    if predicate(status):
                        return status
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"{self.name}: no such status; last {self.statuses[-1:]}, "
                                         f"stderr: {self.stderr_path.read_text()[-2000:]}")
                self._changed.wait(min(remaining, 0.5))

    @property
    def status(self) -> dict[str, Any]:
        return self.wait_status()

    @property
    def bootstrap(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.p2p_port}/p2p/{self.status['peer_id']}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def announced_workers(
    token: str, data_dir: Path, workers: list[WorkerProcess], timeout: float = 30.0
) -> list[WorkerInfo]:
    """What a node of the swarm learns from the workers' overlay announcements."""
    from p2pai.overlay import Overlay, OverlayConfig

    async def read() -> list[WorkerInfo]:
        overlay = Overlay(OverlayConfig(
            data_dir=data_dir, keys=derive_keys(parse_token(token)), name="test-node", version="test", roles=[],
            listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[worker.bootstrap for worker in workers], mdns=False,
        ))
        await overlay.start()
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                found = [w for m in overlay.members() if (w := SwarmNode.from_member(m).worker_info()) and w.online]
                if len(found) == len(workers):
                    return sorted(found, key=lambda w: w.name)
                await asyncio.sleep(0.2)
            raise AssertionError(f"workers not announced within {timeout} s: {overlay.members()}")
        finally:
            await overlay.stop()

    return asyncio.run(read())


def rpc_server(worker: WorkerProcess) -> psutil.Process:
    """The worker's llama.cpp RPC server process (its current one: a dead one is replaced)."""
    [server] = [p for p in psutil.Process(worker.process.pid).children()
                if "p2pai.backends.rpc.server" in " ".join(p.cmdline())]
    return server


def listening_address(port: int, pid: int | str = "self") -> str:
    """The local address a TCP socket listens on for `port`, from /proc/PID/net/tcp{,6}: the
    table of that process's network namespace."""
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # LISTEN
                if len(address) == 8:
                    return ".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0))
                return address
    raise AssertionError(f"nothing listens on port {port}")


class Impostor:
    """An identity that claims `peer_id` but signs with another key."""

    def __init__(self, peer_id: str, signer: Identity) -> None:
        self.peer_id = peer_id
        self.sign = signer.sign
