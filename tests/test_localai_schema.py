"""Fuzz: requests valid under LocalAI's `schema.OpenAIRequest` (its swagger, ../shared/seeds) for chat,
completions, edits and embeddings are answered 2xx, or refused with a 400 for a documented reason:
a value out of its documented bounds, or a field of another operation (README, API). Never a 5xx,
never "Unrecognized request argument" for a field LocalAI defines for the operation."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

text = st.text(max_size=12)
number = st.floats(min_value=-3, max_value=3, allow_nan=False)
integer = st.integers(min_value=-3, max_value=40)
strings = st.lists(text, max_size=3)
FUNCTION = {"name": "f", "parameters": {"type": "object", "properties": {"x": {"enum": [1, 2]}}}}
MESSAGES = st.just([{"role": "user", "content": "hi"}])

# LocalAI's OpenAIRequest, field by field, with a value of its swagger type (structured ones: valid shapes).
LOCALAI: dict[str, st.SearchStrategy[Any]] = {
    "backend": text, "batch": integer, "clip_skip": integer, "echo": st.booleans(), "encoding_format": st.just(
        "float"), "file": text, "files": strings, "frequency_penalty": number, "function_call": st.sampled_from(
        ["auto", "none", {"name": "f"}]), "functions": st.just([FUNCTION]), "grammar": st.just('root ::= "a"'),
    "grammar_json_functions": st.just({"oneOf": [{"type": "object", "properties": {"a": {"const": 1}}}]}),
    "ignore_eos": st.booleans(), "input": st.just("hello"), "instruction": st.just("fix"), "language": text,
    "logit_bias": st.just({"5": 1.0}), "logprobs": st.booleans(), "max_tokens": integer, "messages": MESSAGES,
    "metadata": st.just({"k": "v"}), "min_p": number, "model": st.just("tiny"), "model_base_name": text,
    "n": integer, "n_keep": integer, "negative_prompt": text, "negative_prompt_scale": number,
    "presence_penalty": number, "prompt": st.just("hello"), "quality": text, "reasoning_effort": text,
    "ref_images": strings, "repeat_last_n": integer, "repeat_penalty": number, "response_format": st.just(
        {"type": "json_object"}), "rope_freq_base": number, "rope_freq_scale": number, "seed": integer,
    "size": text, "step": integer, "stop": st.one_of(text, strings), "stream": st.booleans(),
    "temperature": number, "tfz": number, "tokenizer": text, "tool_choice": st.just("auto"),
    "tools": st.just([{"type": "function", "function": FUNCTION}]), "top_k": integer, "top_logprobs": integer,
    "top_p": number, "translate": st.booleans(), "typical_p": number, "mirostat": integer,
    "mirostat_tau": number, "mirostat_eta": number,
}
GENERATION = {"temperature", "top_p", "top_k", "min_p", "max_tokens", "n", "stop", "stream", "seed",
              "presence_penalty", "frequency_penalty", "repeat_penalty", "logit_bias", "grammar", "logprobs",
              "top_logprobs", "response_format", "tools", "tool_choice", "echo"}
CHAT_ONLY = {"tools", "tool_choice", "response_format", "top_logprobs"}
OTHER_OPERATION = {  # LocalAI fields an operation refuses as another operation's (README, API)
    "/v1/chat/completions": {"prompt", "instruction", "input", "echo", "encoding_format"},
    "/v1/completions": {"messages", "instruction", "input", "encoding_format"} | CHAT_ONLY,
    "/v1/edits": {"messages", "prompt", "echo", "encoding_format", "logprobs"} | CHAT_ONLY,
    "/v1/embeddings": {"messages", "prompt", "instruction"} | GENERATION,
}
EXAMPLES = 40
REQUIRED = {"/v1/chat/completions": "messages", "/v1/completions": "prompt", "/v1/edits": "instruction",
            "/v1/embeddings": "input"}


def requests(path: str) -> st.SearchStrategy[dict[str, Any]]:
    optional = st.dictionaries(st.sampled_from(sorted(set(LOCALAI) - {"model", REQUIRED[path]})), st.none(),
                               max_size=8)
    return optional.flatmap(lambda keys: st.fixed_dictionaries(
        {"model": LOCALAI["model"], REQUIRED[path]: LOCALAI[REQUIRED[path]], **{k: LOCALAI[k] for k in keys}}))


@pytest.mark.parametrize("path", list(REQUIRED))
async def test_localai_requests_are_accepted_or_refused_for_a_documented_reason(client: TestClient,
                                                                                path: str) -> None:
    bodies: list[dict[str, Any]] = []

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(body=requests(path))
    def collect(body: dict[str, Any]) -> None:
        bodies.append({**body, "max_tokens": min(body["max_tokens"], 4)} if "max_tokens" in body else body)

    collect()  # generated first (hypothesis runs synchronously), then sent
    reasons = []
    for body in bodies:
        response = await client.post(path, json=body)
        assert response.status < 500, (body, await response.text())
        if response.status >= 400:
            assert response.status == 400, (body, await response.text())
            error = (await response.json())["error"]
            if error["message"].startswith("Unrecognized request argument"):
                assert error["param"] in OTHER_OPERATION[path], (body, error)
            reasons.append(error["param"] or error["code"])
            assert reasons[-1], error  # each refusal names the field at fault or its documented code
        elif body.get("stream"):
            assert (await response.read()).rstrip().endswith(b"[DONE]")
    assert len(bodies) == EXAMPLES and len(reasons) < EXAMPLES  # not everything refused
