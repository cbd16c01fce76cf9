"""Shared fixtures: tiny real GGUF models, an in-process node app, real node processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp.test_utils import TestClient, TestServer

from p2pai.api.app import create_app
from p2pai.api.state import NodeState
from p2pai.api.traces import TraceBuffer
from p2pai.models.catalog import build_catalog
from p2pai.serving.limits import Limits
from p2pai.serving.manager import ModelManager

sys.path.insert(0, str(Path(__file__).parent))
from ports import free_port
from tiny_gguf import write_tiny_gguf

TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_models(tmp_path_factory.mktemp("models"))


def write_test_models(directory: Path) -> Path:
    """Two tiny models: `tiny` (chat, embeddings, tools; 4 slots) and `tiny-b` (another seed, one slot)."""
    write_tiny_gguf(directory / "tiny.gguf", seed=1)
    write_tiny_gguf(directory / "tiny-b.gguf", seed=2)
    (directory / "tiny.yaml").write_text(
        "name: tiny\n"
        "backend: llama-cpp\n"
        "parameters:\n  model: tiny.gguf\n  temperature: 0\n"
        "context_size: 512\n"
        "embeddings: true\n"
        "template:\n  chat: |-\n"
        + "".join(f"    {line}\n" for line in TOOLS_TEMPLATE.splitlines())
    )
    (directory / "tiny-b.yaml").write_text(
        "name: tiny-b\nparameters:\n  model: tiny-b.gguf\n  temperature: 0\n"
        "context_size: 256\nparallel: 1\nmax_queue: 1\n"
    )
    return directory


@pytest.fixture(scope="session")
def tiny_path(models_dir: Path) -> Path:
    return models_dir / "tiny.gguf"


@pytest.fixture
async def client(models_dir: Path, tmp_path: Path) -> AsyncIterator[TestClient]:
    """The real node application in-process, on a loopback port."""
    async with _client(models_dir, tmp_path) as c:
        yield c


class _client:
    def __init__(self, models_dir: Path, data_dir: Path, api_keys: frozenset[str] = frozenset(),
                 token: str | None = None, admin_keys: frozenset[str] = frozenset(),
                 limits: Limits | None = None, trace_bodies: bool = False) -> None:
        catalog = build_catalog(models_dir, data_dir, [])
        self.manager = ModelManager(catalog, threads=2)
        state = NodeState(self.manager, node_id="test-node", version="test", api_keys=api_keys, ready=True,
                          token=token, admin_keys=admin_keys, limits=limits or Limits(),
                          traces=TraceBuffer(bodies=trace_bodies))
        self.client = TestClient(TestServer(create_app(state), host="127.0.0.1"))

    async def __aenter__(self) -> TestClient:
        await self.client.start_server()
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        await self.manager.close()


@pytest.fixture
async def keyed_client(models_dir: Path, tmp_path: Path) -> AsyncIterator[TestClient]:
    async with _client(models_dir, tmp_path, frozenset({"sesame"})) as c:
        yield c


class NodeProcess:
    """A real `p2pai start` process on loopback ports only; stopped by its own PID.

    Its swarm stays on ``host`` (127.0.0.1 unless a test gives another loopback
    address): the client API, libp2p and the peer endpoint listen there, and
    mDNS is either off or (``mdns=True``) bound to the loopback interface.
    """

    def __init__(self, *args: str, data_dir: Path, env: dict[str, str] | None = None,
                 mdns: bool = False, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.p2p_port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.data_dir = data_dir
        self.log = data_dir / "node.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        swarm = ["--p2p-listen", f"/ip4/{host}/tcp/{self.p2p_port}", "--peer-listen", f"{host}:0"]
        swarm += ["--mdns-interface", "127.0.0.1"] if mdns else ["--no-mdns"]
        self.command = [sys.executable, "-m", "p2pai", "start", "--listen", f"{host}:{self.port}",
                        "--data-dir", str(data_dir), *swarm, *args]
        self.env = {**os.environ, **(env or {})}
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=self.env)

    def restart(self) -> None:
        """Start the same command again (same ports and data dir) after it ended."""
        assert self.proc.poll() is not None, "stop or kill it first"
        self.proc = self._spawn()

    def swarm(self) -> dict:
        return httpx.get(self.url + "/api/p2p", timeout=2).json()

    def peer_id(self) -> str:
        return self.swarm()["self"]["id"]

    def bootstrap_addr(self) -> str:
        return f"/ip4/{self.host}/tcp/{self.p2p_port}/p2p/{self.peer_id()}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"node not ready after {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a test may have frozen it
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator:
    started: list[NodeProcess] = []

    def start(*args: str, name: str = "node", env: dict[str, str] | None = None, ready: bool = True,
              mdns: bool = False, host: str = "127.0.0.1", port: int | None = None) -> NodeProcess:
        node = NodeProcess(*args, data_dir=tmp_path / name, env=env, mdns=mdns, host=host, port=port)
        started.append(node)
        if ready:
            node.wait_ready()
        return node

    yield start
    for node in started:
        node.stop()
