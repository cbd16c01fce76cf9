"""LocalAI's request fields on chat, completions, edits and embeddings (its `schema.OpenAIRequest`):
the llama.cpp sampling ones change generation, the legacy functions become tools, the rest are
accepted (the real app in-process, real llama.cpp on the tiny model)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient

HOT = {"temperature": 2.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
"""Sampling loose enough that tiny's end-of-generation tokens (logit 0) get drawn now and then."""
IGNORED = {"tfz": 1.0, "n_keep": 4, "backend": "llama-cpp", "batch": 8, "rope_freq_base": 10000.0,
           "rope_freq_scale": 1.0, "tokenizer": "x", "model_base_name": "x", "negative_prompt": "x",
           "negative_prompt_scale": 1.0, "clip_skip": 1, "step": 1, "size": "256x256", "quality": "hd",
           "ref_images": [], "files": [], "file": "x", "language": "en", "translate": False,
           "reasoning_effort": "low", "modalities": ["text"], "prediction": {"type": "content", "content": "x"},
           "web_search_options": {}, "verbosity": "low", "safety_identifier": "x", "prompt_cache_key": "x"}
APPLIED = {"typical_p": 0.9, "mirostat": 0, "mirostat_tau": 5.0, "mirostat_eta": 0.1, "repeat_last_n": 32,
           "ignore_eos": False}


async def post(client: TestClient, path: str, **body: Any) -> dict[str, Any]:
    response = await client.post(path, json={"model": "tiny", **body})
    answer = await response.json()
    assert response.status == 200, answer
    return answer


async def text(client: TestClient, **body: Any) -> str:
    answer = await post(client, "/v1/completions", prompt="the people", max_tokens=24, **body)
    return answer["choices"][0]["text"]


async def test_every_localai_field_is_accepted_on_the_four_operations(client: TestClient) -> None:
    fields = {**IGNORED, **APPLIED}
    await post(client, "/v1/chat/completions", messages=[{"role": "user", "content": "hi"}], max_tokens=2, **fields)
    await post(client, "/v1/completions", prompt="hi", max_tokens=2, **fields)
    await post(client, "/v1/edits", instruction="fix", input="teh", max_tokens=2, **fields)
    await post(client, "/v1/embeddings", input="hi", **fields)
    wrong = await client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "mirostat": 3})
    assert wrong.status == 400 and (await wrong.json())["error"]["param"] == "mirostat"


async def test_the_llama_cpp_sampling_fields_change_generation(client: TestClient) -> None:
    seeded = {**HOT, "seed": 7}
    plain = await text(client, **seeded)
    assert await text(client, **seeded) == plain  # reproducible, so a difference is the field's doing
    for name, value in [("mirostat", 1), ("mirostat", 2), ("typical_p", 0.3)]:
        changed = await text(client, **seeded, **{name: value})
        assert changed != plain, name
        assert await text(client, **seeded, **{name: value}) == changed, name
    penalised = {"temperature": 0, "repeat_penalty": 5.0}
    no_penalty = await text(client, temperature=0)
    assert await text(client, **penalised) != no_penalty
    assert await text(client, **penalised, repeat_last_n=0) == no_penalty  # a window of 0 tokens: no penalty


async def test_ignore_eos_runs_to_max_tokens(client: TestClient) -> None:
    body = {"prompt": "x3", "max_tokens": 200, "seed": 3, **HOT}
    ended = await post(client, "/v1/completions", **body)
    assert ended["choices"][0]["finish_reason"] == "stop" and ended["usage"]["completion_tokens"] < 200
    forced = await post(client, "/v1/completions", **body, ignore_eos=True)
    assert forced["choices"][0]["finish_reason"] == "length" and forced["usage"]["completion_tokens"] == 200


async def test_legacy_functions_are_tools(client: TestClient) -> None:
    function = {"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"enum": ["Paris", "Rome"]}}, "required": ["city"]}}
    answer = await post(client, "/v1/chat/completions", messages=[{"role": "user", "content": "weather?"}],
                        max_tokens=60, functions=[function], function_call={"name": "get_weather"})
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]["function"]
    assert call["name"] == "get_weather" and json.loads(call["arguments"])["city"] in ("Paris", "Rome")


async def test_grammar_json_functions_constrains_the_output(client: TestClient) -> None:
    structure = {"oneOf": [{"type": "object", "properties": {"function": {"const": "search"},
                                                              "arguments": {"type": "object", "properties": {
                                                                  "q": {"enum": ["a", "b"]}}, "required": ["q"]}},
                            "required": ["function", "arguments"]}]}
    answer = await post(client, "/v1/chat/completions", messages=[{"role": "user", "content": "go"}],
                        max_tokens=60, grammar_json_functions=structure)
    parsed = json.loads(answer["choices"][0]["message"]["content"])
    assert parsed["function"] == "search" and parsed["arguments"]["q"] in ("a", "b")
    completion = await post(client, "/v1/completions", prompt="go", max_tokens=60, grammar_json_functions=structure)
    assert json.loads(completion["choices"][0]["text"])["function"] == "search"
