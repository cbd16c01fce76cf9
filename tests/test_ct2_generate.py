"""CTranslate2 text generation: a tiny random Llama decoder converted by CTranslate2's converter
(tiny_ct2.py) in its own process, behind the real node app, through the official `openai` client;
checked against CTranslate2 and the tokenizer called directly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from conftest import _client
from test_api import assert_openai_error
from tiny_ct2 import EOS, write_tiny_ct2

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_ct2(tmp_path_factory.mktemp("ct2") / "tiny-ct2")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> AsyncIterator[TestClient]:
    models = tmp_path_factory.mktemp("ct2-models")
    (models / "writer.yaml").write_text(f"name: writer\nbackend: ctranslate2\nparameters:\n  model: {model_dir}\n"
                                        "  temperature: 0\ncompute_type: float32\nparallel: 2\ncontext_size: 256\n")
    async with _client(models, tmp_path_factory.mktemp("data")) as c:
        yield c


@pytest.fixture(scope="module")
def api(client: TestClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="none", max_retries=0)


def direct_greedy(model_dir: Path, prompt_ids: list[int], max_tokens: int, end: list[str]) -> str:
    """What CTranslate2 itself generates greedily for these ids, decoded by the model's tokenizer."""
    import ctranslate2
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    generator = ctranslate2.Generator(str(model_dir), compute_type="float32")
    tokens = [tokenizer.id_to_token(i) for i in prompt_ids]
    result = generator.generate_batch([tokens], max_length=max_tokens, sampling_topk=1, end_token=end,
                                      include_prompt_in_result=False)
    return tokenizer.decode(result[0].sequences_ids[0], skip_special_tokens=True)


async def tokens(client: TestClient, text: str, add_special: bool) -> list[int]:
    response = await client.post("/v1/tokenize", json={"model": "writer", "content": text,
                                                       "add_special": add_special})
    return (await response.json())["tokens"]


async def test_completions_are_ctranslate2s_own_greedy_output(api: openai.AsyncOpenAI, client: TestClient,
                                                              model_dir: Path) -> None:
    ids = await tokens(client, PROMPT, add_special=True)
    expected = direct_greedy(model_dir, ids, 24, [EOS])
    completion = await api.completions.create(model="writer", prompt=PROMPT, max_tokens=24)
    assert completion.choices[0].text == expected and expected
    assert completion.usage is not None and completion.usage.prompt_tokens == len(ids)
    if completion.choices[0].finish_reason == "length":
        assert completion.usage.completion_tokens == 24
    streamed = await api.completions.create(model="writer", prompt=PROMPT, max_tokens=24, stream=True)
    assert "".join([chunk.choices[0].text async for chunk in streamed]) == expected


async def test_chat_uses_the_template_of_the_tokenizer_config(api: openai.AsyncOpenAI, client: TestClient,
                                                              model_dir: Path) -> None:
    rendered = "<s><|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"
    ids = await tokens(client, rendered, add_special=False)
    expected = direct_greedy(model_dir, ids, 16, [EOS])
    chat = await api.chat.completions.create(model="writer", messages=[{"role": "user", "content": "hello world"}],
                                             max_tokens=16)
    assert chat.choices[0].message.content == expected
    assert chat.usage is not None and chat.usage.prompt_tokens == len(ids)
    chunks = [chunk async for chunk in await api.chat.completions.create(
        model="writer", messages=[{"role": "user", "content": "hello world"}], max_tokens=16, stream=True,
        stream_options={"include_usage": True})]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == len(ids)


async def test_stop_strings_and_max_tokens(api: openai.AsyncOpenAI) -> None:
    whole = (await api.completions.create(model="writer", prompt=PROMPT, max_tokens=40)).choices[0].text
    assert len(whole) > 4
    stop = whole[2:4]
    cut = (await api.completions.create(model="writer", prompt=PROMPT, max_tokens=40, stop=[stop])).choices[0]
    assert cut.text == whole[:whole.index(stop)] and cut.finish_reason == "stop"
    short = await api.completions.create(model="writer", prompt=PROMPT, max_tokens=3)
    assert short.usage is not None and short.usage.completion_tokens <= 3


async def test_concurrent_requests_get_the_answers_they_get_alone(api: openai.AsyncOpenAI) -> None:
    prompts = ["hello world", "a model of language", "peer to peer", "the lazy dog"]
    alone = [(await api.completions.create(model="writer", prompt=p, max_tokens=20)).choices[0].text for p in prompts]
    together = await asyncio.gather(*(api.completions.create(model="writer", prompt=p, max_tokens=20)
                                      for p in prompts * 2))
    assert [c.choices[0].text for c in together] == alone * 2


async def test_sampling_varies_and_stays_in_the_vocabulary(api: openai.AsyncOpenAI) -> None:
    texts = {(await api.completions.create(model="writer", prompt=PROMPT, max_tokens=12, temperature=1.5,
                                           top_p=1.0)).choices[0].text for _ in range(4)}
    assert len(texts) > 1


@pytest.mark.parametrize(("path", "body", "code"), [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "response_format": {"type": "json_object"}}, "grammar_not_supported"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 2}, "logprobs_not_supported"),
    ("/v1/completions", {"prompt": "hello " * 300}, "context_length_exceeded"),
    ("/v1/completions", {"prompt": [100000]}, "invalid_token_id"),
    ("/v1/embeddings", {"input": "hi"}, "embeddings_not_supported"),
])
async def test_what_the_model_cannot_do_is_a_400(client: TestClient, path: str, body: dict, code: str) -> None:
    response = await client.post(path, json={"model": "writer", **body})
    assert response.status == 400, await response.text()
    assert_openai_error(await response.json(), code)


async def test_the_model_announces_text_tasks(client: TestClient) -> None:
    models = (await (await client.get("/v1/models")).json())["data"]
    assert [(m["id"], m["tasks"], m["backend"]) for m in models] == [("writer", ["chat", "completion"], "ctranslate2")]


@pytest.mark.parametrize("text", ["héllo wörld, 日本語のテキスト 🦊!", "plain words only", "ü"])
async def test_the_detokenizer_gives_what_a_whole_decode_gives(model_dir: Path, text: str) -> None:
    """Byte-level tokens split characters: text is held until a character is whole, and what is left
    at the end comes out as the whole decode has it."""
    from tokenizers import Tokenizer

    from p2pai.backends.ct2.generator import Detokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = tokenizer.encode(text).ids
    assert len(ids) > 1
    for cut in range(len(ids) + 1):  # a generation may end after any token
        detokenizer = Detokenizer(tokenizer, [])
        pieces = [detokenizer.push(token) for token in ids[:cut]]
        assert "\ufffd" not in "".join(pieces)
        assert "".join(pieces) + detokenizer.finish() == tokenizer.decode(ids[:cut])
