"""Any node answers for the swarm: real `p2pai start` processes on 127.0.0.1.

A routes only (no model); B and C serve `tiny` (C also its embeddings); D serves `tiny-b`.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import pytest

from conftest import NodeProcess
from p2pai.routing.forward import PeerUnavailable
from p2pai.routing.router import Router
from p2pai.token import new_token
from test_swarm import online_peers, wait_for

CHAT = [{"role": "user", "content": "hello world"}]


@pytest.fixture(scope="module")
def token() -> str:
    return new_token()


@pytest.fixture
def swarm(start_node, models_dir: Path, token: str, tmp_path: Path):
    embedding = tmp_path / "c-models"
    embedding.mkdir()
    (embedding / "tiny.yaml").write_text(f"name: tiny\nparameters:\n  model: {models_dir / 'tiny.gguf'}\n"
                                         "embeddings: true\n")
    a = start_node("--token", token, "--no-default-model", "--models-dir", str(models_dir / "none"), name="a")
    seed = a.bootstrap_addr()
    common = ("--token", token, "--bootstrap", seed, "--threads", "1")
    b = start_node(*common, "--model", str(models_dir / "tiny.gguf"), "--name", "b", name="b", ready=False)
    c = start_node(*common, "--models-dir", str(embedding), "--name", "c", name="c", ready=False)
    d = start_node(*common, "--model", str(models_dir / "tiny-b.gguf"), "--name", "d", name="d", ready=False)
    for node in (b, c, d):
        node.wait_ready()
    wait_for(lambda: len(online_peers(a)) == 3, 10.0)  # joining is timed in bench_swarm.py; here 3 nodes load at once
    ids = {n.peer_id(): name for name, n in zip("bcd", (b, c, d), strict=True)}
    return {"a": a, "b": b, "c": c, "d": d, "ids": ids}


def client(node) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def served_by(swarm, raw) -> str:
    return swarm["ids"][raw.headers["X-P2PAI-Served-By"]]


def test_entry_node_lists_and_answers_every_model_of_the_swarm(swarm) -> None:
    api = client(swarm["a"])
    models = {m.id: m for m in api.models.list().data}
    assert set(models) == {"tiny", "tiny-b"}
    assert len(models["tiny"].model_extra["nodes"]) == 2
    for model, servers in (("tiny", {"b", "c"}), ("tiny-b", {"d"})):
        raw = api.chat.completions.with_raw_response.create(model=model, messages=CHAT, max_tokens=8)
        assert served_by(swarm, raw) in servers
        assert raw.headers["X-P2PAI-Entry"] == swarm["a"].peer_id()
        assert raw.parse().usage.completion_tokens == 8
        stream = api.completions.create(model=model, prompt="the people", max_tokens=12, stream=True,
                                        stream_options={"include_usage": True})
        chunks = list(stream)
        assert chunks[-1].usage.completion_tokens == 12
        assert "".join(c.choices[0].text for c in chunks if c.choices)
    # The answer through A is the one B gives itself (greedy on the same weights).
    direct = client(swarm["b"]).completions.create(model="tiny", prompt="the people", max_tokens=12, temperature=0)
    routed = api.completions.create(model="tiny", prompt="the people", max_tokens=12, temperature=0)
    assert routed.choices[0].text == direct.choices[0].text


def test_a_request_goes_only_to_nodes_whose_model_serves_its_task(swarm) -> None:
    api = client(swarm["a"])
    assert {m.id: m.model_extra["tasks"] for m in api.models.list().data} == {
        "tiny": ["chat", "completion", "embeddings"], "tiny-b": ["chat", "completion"]}
    for _ in range(6):  # B has tiny too, but without embeddings
        raw = api.embeddings.with_raw_response.create(model="tiny", input="hello")
        assert served_by(swarm, raw) == "c" and len(raw.parse().data[0].embedding) == 64
    for model, pin in (("tiny-b", None), ("tiny", "b")):
        with pytest.raises(openai.BadRequestError) as refused:
            api.embeddings.create(model=model, input="hello", extra_headers={"X-P2PAI-Node": pin} if pin else None)
        assert refused.value.code == "embeddings_not_supported"
        assert "serves: chat, completion" in refused.value.message


def test_load_spreads_over_the_nodes_having_the_model(swarm) -> None:
    api = client(swarm["a"])

    def ask(_: int) -> str:
        raw = api.completions.with_raw_response.create(model="tiny", prompt="the people of", max_tokens=200)
        return served_by(swarm, raw)

    with ThreadPoolExecutor(8) as pool:
        servers = Counter(pool.map(ask, range(16)))
    assert set(servers) == {"b", "c"}, servers
    metrics = {n["name"]: n["metrics"] for n in swarm["a"].swarm()["federated_nodes"]}
    assert metrics["b"]["requests"] + metrics["c"]["requests"] >= 16


def test_a_killed_node_is_skipped_without_error(swarm) -> None:
    api = client(swarm["a"])
    swarm["b"].proc.send_signal(signal.SIGKILL)  # A still believes B is online for a moment
    for _ in range(6):
        raw = api.completions.with_raw_response.create(model="tiny", prompt="hello", max_tokens=4)
        assert served_by(swarm, raw) == "c"


def _fail_mid_stream(swarm, signum: int, **request: object) -> tuple[NodeProcess, list, Iterator, float]:
    """Start a long stream through A, then kill or freeze the node serving it after its first
    chunk. Returns the serving node, the chunk before the failure, the rest of the stream and
    when the failure happened."""
    raw = client(swarm["a"]).completions.with_raw_response.create(
        model="tiny", prompt="the people", max_tokens=2000, stream=True, temperature=0, **request
    )
    server = swarm[served_by(swarm, raw)]
    chunks = iter(raw.parse())
    first = [next(chunks)]
    server.proc.send_signal(signal.SIGSTOP)  # freeze first, so the answer is surely unfinished
    if signum == signal.SIGKILL:
        server.proc.send_signal(signal.SIGKILL)
    return server, first, chunks, time.monotonic()


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSTOP])
def test_a_node_failing_mid_stream_is_continued_on_another(swarm, signum: int) -> None:
    server, first, rest, failed_at = _fail_mid_stream(swarm, signum, stream_options={"include_usage": True})
    try:
        chunks = first + list(rest)  # no error: the client sees one stream
    finally:
        server.proc.send_signal(signal.SIGCONT)
    assert time.monotonic() - failed_at < 10
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert sum(1 for t in texts if t) > 100  # far more than the node sent before it failed
    assert chunks[-2].choices[0].finish_reason == "length"
    assert len({c.id for c in chunks}) == 1  # the continuation reads as the same completion
    assert chunks[-1].usage.completion_tokens >= 1900


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSTOP])
def test_a_stream_that_cannot_be_continued_ends_with_an_explicit_error(swarm, signum: int) -> None:
    server, _, rest, failed_at = _fail_mid_stream(swarm, signum, logprobs=1)  # logprobs cannot be carried over
    try:
        with pytest.raises(openai.APIError) as broken:
            for _ in rest:
                pass
    finally:
        server.proc.send_signal(signal.SIGCONT)
    assert time.monotonic() - failed_at < 5  # a frozen node is given up within the liveness limit
    assert broken.value.body["code"] == "peer_failed"


def test_pinning_a_node_and_the_404_and_503_cases(swarm) -> None:
    api = client(swarm["a"])
    for name in ("b", "c", "c", "b"):
        raw = api.completions.with_raw_response.create(model="tiny", prompt="hi", max_tokens=2,
                                                       extra_headers={"X-P2PAI-Node": name})
        assert served_by(swarm, raw) == name
    by_id = api.completions.with_raw_response.create(model="tiny", prompt="hi", max_tokens=2,
                                                     extra_headers={"X-P2PAI-Node": swarm["c"].peer_id()})
    assert served_by(swarm, by_id) == "c"
    with pytest.raises(openai.NotFoundError) as unknown_node:
        api.completions.create(model="tiny", prompt="hi", max_tokens=2, extra_headers={"X-P2PAI-Node": "nobody"})
    assert unknown_node.value.body["code"] == "node_not_found"
    with pytest.raises(openai.NotFoundError) as wrong_node:
        api.completions.create(model="tiny", prompt="hi", max_tokens=2, extra_headers={"X-P2PAI-Node": "d"})
    assert wrong_node.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as unknown_model:
        api.chat.completions.create(model="nope", messages=CHAT)
    assert unknown_model.value.body["code"] == "model_not_found"
    # tiny-b lives on D only: with D dead the model is known but nobody can serve it.
    d_id = swarm["d"].peer_id()
    swarm["d"].proc.send_signal(signal.SIGKILL)
    wait_for(lambda: d_id not in online_peers(swarm["a"]), 3.0)
    response = httpx.post(swarm["a"].url + "/v1/completions", json={"model": "tiny-b", "prompt": "x"}, timeout=10)
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert response.json()["error"]["code"] == "no_node_available"


def test_a_peer_that_cannot_be_reached_directly_is_served_through_the_tunnel(start_node, tiny_path: Path,
                                                                             token: str) -> None:
    from ports import free_port

    a = start_node("--token", token, "--no-default-model", "--models-dir", "/nonexistent", name="a")
    closed = free_port()  # nobody listens there: every direct attempt fails
    b = start_node("--token", token, "--bootstrap", a.bootstrap_addr(), "--model", str(tiny_path),
                   "--peer-advertise", f"127.0.0.1:{closed}", "--name", "b", name="b")
    # Online first, then its endpoint with its models: a node offers models only once it listens.
    wait_for(lambda: online_peers(a).get(b.peer_id(), {}).get("address"), 5.0)
    assert online_peers(a)[b.peer_id()]["address"] == f"https://127.0.0.1:{closed}"
    api = client(a)
    direct = client(b).completions.create(model="tiny", prompt="the people", max_tokens=40, temperature=0)
    raw = api.completions.with_raw_response.create(model="tiny", prompt="the people", max_tokens=40, temperature=0)
    assert raw.headers["X-P2PAI-Served-By"] == b.peer_id()
    assert raw.parse().choices[0].text == direct.choices[0].text
    streamed = api.completions.create(model="tiny", prompt="the people", max_tokens=40, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == direct.choices[0].text
    with pytest.raises(openai.BadRequestError):  # the peer's 4xx comes back through the tunnel unchanged
        api.completions.create(model="tiny", prompt="x", max_tokens=2, temperature=7)


async def test_waiting_for_a_peer_that_goes_offline_fails_over_unless_the_client_left() -> None:
    """The wait for a peer's headers runs in the handler's own task: an abort (the peer went
    offline) becomes PeerUnavailable and leaves the task usable; the client leaving stays a cancel."""
    router = Router(cast(Any, None), cast(Any, None), cast(Any, None))
    loop = asyncio.get_running_loop()

    def abort_peer() -> None:
        for abort in list(router._aborts["p"]):
            abort()

    async def handler() -> str:
        with pytest.raises(PeerUnavailable):
            await router._abortable("p", loop.create_future())
        await asyncio.sleep(0)  # not cancelled any more: the next candidate can be tried
        return "next candidate"

    task = asyncio.create_task(handler())
    await asyncio.sleep(0)
    abort_peer()
    assert await task == "next candidate"
    assert not router._aborts["p"]

    for peer_too in (False, True):
        task = asyncio.create_task(router._abortable("p", loop.create_future()))
        await asyncio.sleep(0)
        if peer_too:
            abort_peer()
        task.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not router._aborts["p"]
