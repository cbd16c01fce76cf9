"""llama.cpp RPC workers end to end: real `p2pai worker` processes on 127.0.0.1, real llama.cpp."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from aiohttp.test_utils import TestClient, TestServer
from openai import APIError, AsyncOpenAI

from p2pai.api.app import create_app
from p2pai.api.state import NodeState
from p2pai.backends.base import GenerationRequest, SamplingParams
from p2pai.backends.process import ModelProcess
from p2pai.backends.rpc.relay import Credentials, Endpoint, RelayRefused, probe
from p2pai.backends.rpc.server import RpcServerProcess, rpc_hello
from p2pai.backends.rpc.workers import WorkerInfo
from p2pai.identity import Identity
from p2pai.models.builtin import GEMMA, ensure_builtin_file
from p2pai.models.catalog import build_catalog
from p2pai.serving.manager import ModelManager
from p2pai.token import derive_keys, new_token, parse_token
from rpc_helpers import Impostor, WorkerProcess, announced_workers, listening_address, rpc_server

NODE = Identity.generate()
NODE_ID = NODE.peer_id


@pytest.fixture(scope="module")
def token() -> str:
    return new_token()


@pytest.fixture(scope="module")
def workers(token: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[WorkerProcess]]:
    base = tmp_path_factory.mktemp("workers")
    started = [WorkerProcess(token, base / name, name) for name in ("w1", "w2")]
    try:
        for worker in started:
            worker.wait_status()
        yield started
    finally:
        for worker in started:
            worker.stop()


@pytest.fixture(scope="module")
def infos(token: str, workers: list[WorkerProcess], tmp_path_factory: pytest.TempPathFactory) -> list[WorkerInfo]:
    return announced_workers(token, tmp_path_factory.mktemp("node-overlay"), workers)


@pytest.fixture(scope="module")
def identity(token: str) -> Credentials:
    return Credentials(NODE, derive_keys(parse_token(token)).rpc_key)


@pytest.fixture(scope="module")
def gemma_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if GEMMA.pieces() is None:
        pytest.skip("the gemma-3-270m package is not installed")
    config = GEMMA.config(tmp_path_factory.mktemp("gemma"))
    ensure_builtin_file(config)
    return Path(config.parameters.model)


def write_model(models_dir: Path, name: str, path: Path, rpc: str, extra: str = "") -> None:
    models_dir.mkdir(parents=True, exist_ok=True)
    (models_dir / f"{name}.yaml").write_text(
        f"name: {name}\nparameters:\n  model: {path}\n  temperature: 0\ncontext_size: 512\nthreads: 1\n"
        f"rpc: {rpc}\n{extra}"
    )


class Node:
    """The node's serving stack in-process (ModelManager + API) with an explicit worker list."""

    def __init__(self, models_dir: Path, data_dir: Path, workers: list[WorkerInfo], identity: Credentials) -> None:
        self.manager = ModelManager(build_catalog(models_dir, data_dir, []), threads=1,
                                    workers=lambda: workers, rpc_credentials=identity)
        state = NodeState(self.manager, node_id="test-node", version="test", api_keys=frozenset(), ready=True)
        self.client = TestClient(TestServer(create_app(state), host="127.0.0.1"))

    async def __aenter__(self) -> Node:
        await self.client.start_server()
        self.openai = AsyncOpenAI(base_url=str(self.client.make_url("/v1")), api_key="none", max_retries=0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        await self.manager.close()


def test_worker_announces_itself_and_its_rpc_server_listens_in_a_network_of_its_own(
    workers: list[WorkerProcess], infos: list[WorkerInfo]
) -> None:
    assert [info.name for info in infos] == ["w1", "w2"]
    for worker, info in zip(workers, infos, strict=True):
        status = worker.status
        assert info.peer_id == status["peer_id"] and info.hosts == ("127.0.0.1",)
        assert info.port == status["worker"]["rpc"]["port"] and info.protocol == "7.0.0"
        assert info.free_memory == 4096 * 2**20 and info.in_use_by is None
        server = rpc_server(worker)
        assert status["worker"]["isolated"]
        assert listening_address(status["rpc_port"], server.pid) == "127.0.0.1"
        assert os.readlink(f"/proc/{server.pid}/ns/net") != os.readlink("/proc/self/ns/net")


def test_no_other_local_process_reaches_the_workers_rpc_server(workers: list[WorkerProcess]) -> None:
    """Its loopback is its own: the port it listens on is closed on this machine's loopback."""
    port = workers[0].status["rpc_port"]
    with pytest.raises(AssertionError, match="nothing listens"):
        listening_address(port)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


async def test_where_namespaces_are_not_allowed_the_rpc_server_listens_on_loopback_and_says_so(
    caplog: pytest.LogCaptureFixture
) -> None:
    server = RpcServerProcess(threads=1, cache_dir=None, isolate=False)
    with caplog.at_level("WARNING"):
        await server.start()
    try:
        assert not server.isolated and server.protocol == "7.0.0"
        assert "shares this machine's loopback" in caplog.text
        assert listening_address(server.port) == "127.0.0.1"
        sock = await server.connect()  # the relay's way still works
        reader, writer = await asyncio.open_connection(sock=sock)
        assert await rpc_hello(reader, writer) == "7.0.0"
        writer.close()
    finally:
        await server.stop()


async def test_relay_refuses_a_connection_without_the_token_handshake(workers: list[WorkerProcess]) -> None:
    worker = workers[0]
    before = worker.status["worker"]["served"]["refused"]
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.status["worker"]["rpc"]["port"])
    # llama.cpp's own HELLO, as a client that bypasses the relay protocol would send it.
    writer.write(bytes([14]) + (24).to_bytes(8, "little") + bytes(24))
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing from the RPC server
    writer.close()
    worker.wait_status(lambda s: s["worker"]["served"]["refused"] > before)


async def test_a_worker_of_another_swarm_is_never_used(
    infos: list[WorkerInfo], tmp_path: Path, tiny_path: Path
) -> None:
    stranger = Credentials(NODE, derive_keys(parse_token(new_token())).rpc_key)
    with pytest.raises(RelayRefused, match="authentication failed"):
        await probe(Endpoint(infos[0].peer_id, "127.0.0.1", infos[0].port), stranger)
    write_model(tmp_path / "models", "tiny-rpc", tiny_path, "auto")
    async with Node(tmp_path / "models", tmp_path / "data", infos, stranger) as node:
        engine = await node.manager.engine("tiny-rpc")
        assert engine.spec.workers == ()  # no usable worker: it runs on the node alone


async def generate(engine: ModelProcess, prompt: str, max_tokens: int) -> str:
    request = GenerationRequest(prompt, SamplingParams(temperature=0), max_tokens=max_tokens)
    return "".join([chunk.text async for chunk in engine.generate(request)])


@pytest.mark.parametrize("model", ["tiny", "gemma"])
async def test_model_layers_on_two_workers_answer_through_the_openai_api(
    model: str, workers: list[WorkerProcess], infos: list[WorkerInfo], identity: Credentials, tmp_path: Path,
    tiny_path: Path, request: pytest.FixtureRequest,
) -> None:
    path = tiny_path if model == "tiny" else request.getfixturevalue("gemma_path")
    write_model(tmp_path / "models", "spread", path, "[w1, w2]", "chat_format: gemma\n" if model == "gemma" else "")
    before = [w.status["worker"]["served"] for w in workers]
    async with Node(tmp_path / "models", tmp_path / "data", infos, identity) as node:
        engine = await node.manager.engine("spread")
        assert engine.spec.workers and engine.pid != os.getpid()
        layers = engine.placement.layers
        assert layers[infos[0].peer_id] and layers[infos[1].peer_id]
        assert layers["local"] == [max(layers["local"])]  # only the output layer
        for worker in workers:  # the workers saw this node's session and its tensors
            worker.wait_status(lambda s: s["worker"]["in_use_by"] == NODE_ID)
        reply = await node.openai.chat.completions.create(
            model="spread", messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0)
        assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
        text = await node.openai.completions.create(model="spread", prompt="one two three", max_tokens=4)
        assert text.choices[0].text
    least = 100_000 if model == "tiny" else 20_000_000
    for worker, served in zip(workers, before, strict=True):
        # Each worker received at least the weights of its layers, and the lease ended with the
        # node. (The health check's short session comes first: wait for the account after it.)
        status = worker.wait_status(lambda s, served=served: s["worker"]["in_use_by"] is None
                                    and s["worker"]["served"]["bytes_in"] - served["bytes_in"] > least)
        if model == "gemma":  # the output layer stayed local: no worker sent logits (1 MB per token)
            assert status["worker"]["served"]["bytes_out"] - served["bytes_out"] < 4_000_000


async def test_a_second_node_is_refused_while_one_holds_the_lease(
    infos: list[WorkerInfo], identity: Credentials, tmp_path: Path, tiny_path: Path
) -> None:
    write_model(tmp_path / "models", "tiny-rpc", tiny_path, "[w1]")
    other = Credentials(Identity.generate(), identity.key)
    worker = Endpoint(infos[0].peer_id, "127.0.0.1", infos[0].port)
    async with Node(tmp_path / "models", tmp_path / "data", infos, identity) as node:
        assert (await node.manager.engine("tiny-rpc")).spec.workers
        with pytest.raises(RelayRefused, match=f"in use by {NODE_ID}"):
            await probe(worker, other)
        # A member claiming the holder's peer id cannot sign for it.
        with pytest.raises(RelayRefused, match="authentication failed"):
            await probe(worker, Credentials(Impostor(NODE_ID, other.identity), identity.key))  # type: ignore[arg-type]
    await probe(worker, other)  # released


async def test_killed_worker_fails_the_request_cleanly_and_the_model_reloads_without_it(
    token: str, infos: list[WorkerInfo], identity: Credentials, tmp_path: Path, gemma_path: Path
) -> None:
    doomed = WorkerProcess(token, tmp_path / "w3", "w3")
    try:
        [w3] = await asyncio.to_thread(announced_workers, token, tmp_path / "overlay", [doomed])
        swarm = [infos[0], w3]
        write_model(tmp_path / "models", "spread", gemma_path, "[w1, w3]", "chat_format: gemma\n")
        async with Node(tmp_path / "models", tmp_path / "data", swarm, identity) as node:
            first = await node.manager.engine("spread")
            assert first.spec.workers and first.placement.layers[w3.peer_id]
            stream = await node.openai.completions.create(model="spread", prompt="Once upon a time",
                                                          max_tokens=400, stream=True)
            got = 0
            with pytest.raises(APIError) as failure:
                async for _chunk in stream:
                    got += 1
                    if got == 3:
                        doomed.kill()
            assert f"RPC worker {w3.peer_id}" in failure.value.message
            assert first.failure and w3.peer_id in str(first.failure)
            # The node survived; the next request reloads the model on w1 alone.
            reply = await node.openai.completions.create(model="spread", prompt="one two three", max_tokens=4)
            assert reply.choices[0].text
            second = await node.manager.engine("spread")
            assert second is not first and second.spec.workers
            assert second.placement.workers == (infos[0].peer_id,)
    finally:
        doomed.stop()


async def test_a_worker_admits_only_the_nodes_it_allows_and_the_model_is_placed_elsewhere(
    token: str, identity: Credentials, tmp_path: Path, tiny_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    closed = WorkerProcess(token, tmp_path / "wa", "wa", extra=("--allow-node", Identity.generate().peer_id))
    open_to_us = WorkerProcess(token, tmp_path / "wb", "wb", extra=("--allow-node", NODE_ID))
    try:
        infos = await asyncio.to_thread(announced_workers, token, tmp_path / "overlay", [closed, open_to_us])
        write_model(tmp_path / "models", "both", tiny_path, "[wa, wb]")
        write_model(tmp_path / "models", "only-wa", tiny_path, "[wa]")
        async with Node(tmp_path / "models", tmp_path / "data", infos, identity) as node:
            with caplog.at_level("WARNING"):
                both = await node.manager.engine("both")
                assert both.spec.workers and both.placement.workers == (infos[1].peer_id,)
                alone = await node.manager.engine("only-wa")
                assert alone.spec.workers == ()  # no worker admits it: it runs on the node alone
            assert "admits only the nodes named by its --allow-node" in caplog.text
            reply = await node.openai.completions.create(model="both", prompt="one two", max_tokens=4)
            assert reply.choices[0].text
        status = await asyncio.to_thread(closed.wait_status, lambda s: s["worker"]["served"]["refused"] >= 2, 10)
        assert status["worker"]["in_use_by"] is None and status["worker"]["served"]["sessions"] == 0
    finally:
        closed.stop()
        open_to_us.stop()


async def test_an_idle_lease_ends_and_the_model_reloads_on_next_use(
    token: str, identity: Credentials, tmp_path: Path, tiny_path: Path
) -> None:
    worker = WorkerProcess(token, tmp_path / "wi", "wi", extra=("--lease-idle", "2"))
    try:
        [info] = await asyncio.to_thread(announced_workers, token, tmp_path / "overlay", [worker])
        write_model(tmp_path / "models", "idle", tiny_path, "[wi]")
        async with Node(tmp_path / "models", tmp_path / "data", [info], identity) as node:
            reply = await node.openai.completions.create(model="idle", prompt="one two", max_tokens=4)
            assert reply.choices[0].text
            first = await node.manager.engine("idle")
            assert first.spec.workers
            idle_since = time.monotonic()
            while first.failure is None and time.monotonic() - idle_since < 10:  # noqa: ASYNC110 - no event for it
                await asyncio.sleep(0.1)
            assert first.failure is not None and "the lease ended after 2 s without traffic" in str(first.failure)
            assert 1.5 <= time.monotonic() - idle_since < 6
            assert worker.wait_status()["worker"]["in_use_by"] is None  # the worker is free for others
            reply = await node.openai.completions.create(model="idle", prompt="one two", max_tokens=4)
            assert reply.choices[0].text
            second = await node.manager.engine("idle")
            assert second is not first and second.spec.workers
    finally:
        worker.stop()


def test_a_worker_admits_a_node_by_the_name_it_announces(start_node, tmp_path: Path, tiny_path: Path) -> None:
    token = new_token()
    worker = WorkerProcess(token, tmp_path / "wn", "wn", extra=("--allow-node", "trusted"))
    try:
        write_model(tmp_path / "models", "named", tiny_path, "[wn]")
        node = start_node("--token", token, "--models-dir", str(tmp_path / "models"), "--threads", "1",
                          "--name", "trusted", "--bootstrap", worker.bootstrap, name="node")
        for _ in range(100):  # the worker must know the node's name: its announcement, not the relay, says it
            if any(n["online"] for n in node.swarm()["llama_cpp_nodes"]):
                break
            time.sleep(0.1)
        import httpx

        answer = httpx.post(node.url + "/v1/completions", json={"model": "named", "prompt": "one", "max_tokens": 4},
                            timeout=60)
        assert answer.status_code == 200, answer.text
        worker.wait_status(lambda s: s["worker"]["in_use_by"] == node.peer_id(), 10)
    finally:
        worker.stop()


def test_p2pai_start_places_a_model_on_the_swarms_workers_and_shows_them(
    start_node, tmp_path: Path, tiny_path: Path
) -> None:
    """The whole path with real processes: `p2pai start` finds the workers through the overlay."""
    import subprocess
    import sys

    import httpx
    from openai import OpenAI

    token = new_token()
    started = [WorkerProcess(token, tmp_path / name, name) for name in ("x1", "x2")]
    try:
        write_model(tmp_path / "models", "spread", tiny_path, "auto")
        node = start_node("--token", token, "--models-dir", str(tmp_path / "models"), "--threads", "1",
                          *[arg for worker in started for arg in ("--bootstrap", worker.bootstrap)], name="node")

        def online_workers() -> list[dict]:
            return [n for n in node.swarm()["llama_cpp_nodes"] if n["online"]]

        for _ in range(100):
            if len(online_workers()) == 2:
                break
            time.sleep(0.1)
        shown = {n["name"]: n for n in online_workers()}
        assert set(shown) == {"x1", "x2"}
        assert all(n["tunnelAddress"].startswith("127.0.0.1:") and n["protocol"] for n in shown.values())
        answer = OpenAI(base_url=node.url + "/v1", api_key="none", max_retries=0).chat.completions.create(
            model="spread", messages=[{"role": "user", "content": "hello"}], max_tokens=8
        )
        assert answer.usage.completion_tokens == 8
        node_id = node.peer_id()
        for worker in started:  # the workers' own account: leased to this node, tensors received
            status = worker.wait_status(lambda s: s["worker"]["in_use_by"] == node_id and
                                        s["worker"]["served"]["bytes_in"] > 100_000)
            assert status["worker"]["served"]["sessions"] >= 1
        for _ in range(50):
            if all(n["in_use_by"] == node_id for n in online_workers()):
                break
            time.sleep(0.1)
        assert all(n["in_use_by"] == node_id for n in online_workers())
        table = subprocess.run([sys.executable, "-m", "p2pai", "peers", "--url", node.url], capture_output=True,
                               text=True, timeout=30, env={**os.environ, "COLUMNS": "200"})
        assert table.returncode == 0 and table.stdout.count("llama.cpp worker") + table.stderr.count(
            "llama.cpp worker") == 2
        assert httpx.get(node.url + "/api/p2p", timeout=5).status_code == 200
    finally:
        for worker in started:
            worker.stop()


async def test_a_dead_rpc_server_is_restarted_and_used_again(
    token: str, identity: Credentials, tmp_path: Path, tiny_path: Path
) -> None:
    worker = WorkerProcess(token, tmp_path / "w4", "w4")
    try:
        [info] = await asyncio.to_thread(announced_workers, token, tmp_path / "overlay", [worker])
        rpc_server(worker).kill()
        await asyncio.to_thread(worker.wait_status, lambda s: s["worker"]["served"]["server_restarts"] == 1, 20)
        for _ in range(100):  # the new server listens once it has started (in its own namespace)
            await asyncio.sleep(0.1)
            with contextlib.suppress(AssertionError, ValueError, psutil.Error):
                assert listening_address(worker.status["rpc_port"], rpc_server(worker).pid) == "127.0.0.1"
                break
        else:
            raise AssertionError("the restarted RPC server never listened")
        write_model(tmp_path / "models", "again", tiny_path, "[w4]")
        async with Node(tmp_path / "models", tmp_path / "data", [info], identity) as node:
            reply = await node.openai.completions.create(model="again", prompt="one two", max_tokens=4)
            assert reply.choices[0].text
            engine = await node.manager.engine("again")
            assert engine.spec.workers and engine.placement.layers[info.peer_id]
    finally:
        worker.stop()


async def test_a_frozen_worker_fails_the_request_cleanly(
    token: str, identity: Credentials, tmp_path: Path, tiny_path: Path
) -> None:
    import signal

    frozen = WorkerProcess(token, tmp_path / "w5", "w5")
    try:
        [info] = await asyncio.to_thread(announced_workers, token, tmp_path / "overlay", [frozen])
        write_model(tmp_path / "models", "stuck", tiny_path, "[w5]")
        async with Node(tmp_path / "models", tmp_path / "data", [info], identity) as node:
            stream = await node.openai.completions.create(model="stuck", prompt="one two", max_tokens=400,
                                                          stream=True)
            started = 0.0
            with pytest.raises(APIError) as failure:
                async for _ in stream:
                    if not started:
                        frozen.process.send_signal(signal.SIGSTOP)
                        started = time.monotonic()
            assert time.monotonic() - started < 15
            assert "w5" in failure.value.message or info.peer_id in failure.value.message
    finally:
        frozen.process.send_signal(signal.SIGCONT)
        frozen.stop()
