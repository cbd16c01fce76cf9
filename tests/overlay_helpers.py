"""Run overlay nodes (`python -m p2pai.overlay`) as real processes on 127.0.0.1
and follow the JSON lines they print."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from p2pai.overlay import Overlay, OverlayConfig
from p2pai.overlay.membership import MemberEvent
from p2pai.token import NetworkKeys
from ports import free_port

Line = dict[str, Any]


class Node:
    """One runner process; its stdout lines are collected by a reader thread."""

    def __init__(
        self,
        data_dir: Path,
        seed: str,
        *,
        name: str,
        port: int | None = None,
        bootstrap: list[str] = (),
        mdns: bool = False,
        small_swarm: int | None = None,
    ) -> None:
        self.data_dir, self.seed, self.name = data_dir, seed, name
        self.port = port or free_port()
        self.bootstrap, self.mdns, self.small_swarm = list(bootstrap), mdns, small_swarm
        self.lines: list[Line] = []
        self._changed = threading.Condition()
        self.process: subprocess.Popen[bytes] | None = None
        self.stderr_path = data_dir.parent / f"{data_dir.name}.stderr"

    def start(self) -> Node:
        args = [
            sys.executable, "-m", "p2pai.overlay",
            "--data-dir", str(self.data_dir),
            "--psk-seed", self.seed,
            "--name", self.name,
            "--listen", f"/ip4/127.0.0.1/tcp/{self.port}",
        ]
        for addr in self.bootstrap:
            args += ["--bootstrap", addr]
        args += ["--mdns-interface", "127.0.0.1"] if self.mdns else ["--no-mdns"]
        if self.small_swarm is not None:
            args += ["--small-swarm", str(self.small_swarm)]
        self.lines = []
        self.started_at = time.time()
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=stderr, cwd=Path(__file__).parent.parent
            )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        return self

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = json.loads(raw)
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(
        self, predicate: Callable[[Line], bool], timeout: float, what: str = "", since: float = 0.0
    ) -> Line:
        """The first line printed at ``since`` (time.time()) or later that satisfies
        ``predicate``; fails after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if "self" in line and line["t"] >= since and predicate(line):
                        return line
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    last = self.lines[-1] if self.lines else None
                    raise AssertionError(f"{self.name}: no {what or 'matching line'} within {timeout} s; last: {last}")
                self._changed.wait(remaining)

    def wait_started(self, timeout: float = 15.0) -> Line:
        return self.wait_for(lambda line: line["event"] == "started", timeout, "start")

    @property
    def info(self) -> Line:
        return self.wait_started()["self"]

    @property
    def peer_id(self) -> str:
        return self.info["peer_id"]

    @property
    def addr(self) -> str:
        return self.info["addrs"][0]

    def latest(self) -> Line:
        with self._changed:
            return self.lines[-1]

    def signal(self, signum: int) -> float:
        """Send ``signum`` to this node's process and return when (time.time())."""
        assert self.process is not None
        now = time.time()
        os.kill(self.process.pid, signum)
        return now

    def stop(self) -> None:
        """End the process (it may be stopped or dead already); bounded."""
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGCONT)
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def member(line: Line, peer_id: str) -> Line | None:
    return next((m for m in line["members"] if m["peer_id"] == peer_id), None)


def sees_online(*peer_ids: str) -> Callable[[Line], bool]:
    def check(line: Line) -> bool:
        return all((m := member(line, p)) is not None and m["online"] for p in peer_ids)

    return check


def sees_offline(peer_id: str) -> Callable[[Line], bool]:
    def check(line: Line) -> bool:
        m = member(line, peer_id)
        return m is not None and not m["online"]

    return check


@contextlib.asynccontextmanager
async def overlay_pair(tmp_path: Path, roles: list[str]) -> AsyncIterator[
        tuple[Overlay, Overlay, asyncio.Queue[MemberEvent]]]:
    """Two in-process overlays of a fresh swarm on 127.0.0.1: A, and B bootstrapped to A with its
    membership events subscribed before it starts; both stopped afterwards, each within 3 s."""
    keys = NetworkKeys(*(os.urandom(32) for _ in range(5)), discriminator=os.urandom(4).hex())

    def config(name: str, bootstrap: list[str]) -> OverlayConfig:
        return OverlayConfig(data_dir=tmp_path / name, keys=keys, name=name, version="0.1.0", roles=roles,
                             listen=[f"/ip4/127.0.0.1/tcp/{free_port()}"], bootstrap=bootstrap, mdns=False)

    a = Overlay(config("a", []))
    await a.start()
    b = Overlay(config("b", a.self_member().addrs))
    events = b.subscribe()
    await b.start()
    try:
        yield a, b, events
    finally:
        for overlay in (b, a):
            started = time.monotonic()
            await overlay.stop()
            assert time.monotonic() - started < 3
