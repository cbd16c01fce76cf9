"""The HTTP API in-process over loopback, on tiny real GGUF models."""

from __future__ import annotations

import asyncio
import base64
import json
import struct

import pytest
from aiohttp.test_utils import TestClient

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 8}


def assert_openai_error(body: dict, code: str | None = None) -> None:
    assert set(body) == {"error"}
    assert {"message", "type", "code", "param"} <= set(body["error"])
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code


async def sse_events(response) -> list:
    assert response.headers["Content-Type"].startswith("text/event-stream")
    text = await response.text()
    events = [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


async def test_models_list_and_get(client: TestClient) -> None:
    response = await client.get("/v1/models")
    assert response.status == 200
    ids = sorted(m["id"] for m in (await response.json())["data"])
    assert ids == ["tiny", "tiny-b"]
    one = await client.get("/v1/models/tiny")
    assert (await one.json())["id"] == "tiny"
    missing = await client.get("/v1/models/nope")
    assert missing.status == 404
    assert_openai_error(await missing.json(), "model_not_found")


async def test_chat_completion_shape_and_exact_usage(client: TestClient) -> None:
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status == 200
    body = await response.json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    prompt = "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"
    tokens = await client.post("/v1/tokenize", json={"model": "tiny", "content": prompt, "add_special": False})
    assert usage["prompt_tokens"] == len((await tokens.json())["tokens"])
    assert usage["completion_tokens"] == 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8
    assert response.headers["X-P2PAI-Served-By"] == "test-node"


async def test_chat_stream_matches_non_stream(client: TestClient) -> None:
    whole = await (await client.post("/v1/chat/completions", json=CHAT)).json()
    response = await client.post("/v1/chat/completions",
                                 json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    events = await sse_events(response)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert finishes == ["length"]
    assert events[-1]["choices"] == []
    usage = events[-1]["usage"]
    assert {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")} == {
        k: whole["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1
    assert all(e["object"] == "chat.completion.chunk" for e in events)


async def test_content_parts_and_developer_role(client: TestClient) -> None:
    parts = {**CHAT, "messages": [{"role": "developer", "content": "be brief"},
                                  {"role": "user", "content": [{"type": "text", "text": "hello world"}]}]}
    response = await client.post("/v1/chat/completions", json=parts)
    assert response.status == 200


async def test_n_choices_with_seed_are_reproducible(client: TestClient) -> None:
    body = {**CHAT, "n": 3, "temperature": 1.5, "seed": 11, "top_k": 0, "min_p": 0}
    first = await (await client.post("/v1/chat/completions", json=body)).json()
    again = await (await client.post("/v1/chat/completions", json=body)).json()
    texts = [c["message"]["content"] for c in first["choices"]]
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    assert texts == [c["message"]["content"] for c in again["choices"]]
    assert len(set(texts)) > 1
    assert first["usage"]["completion_tokens"] == 24


async def test_chat_logprobs(client: TestClient) -> None:
    body = await (await client.post("/v1/chat/completions", json={**CHAT, "logprobs": True, "top_logprobs": 2})).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 8
    assert all(len(item["top_logprobs"]) == 2 and item["logprob"] <= 0 for item in content)


async def test_json_schema_response_format_gives_valid_json(client: TestClient) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    body = {**CHAT, "max_tokens": 60,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    reply = await (await client.post("/v1/chat/completions", json=body)).json()
    content = reply["choices"][0]["message"]["content"]
    assert isinstance(json.loads(content)["n"], int)


async def test_forced_tool_call(client: TestClient) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"]}}}
    body = {**CHAT, "max_tokens": 60, "tools": [tool],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    reply = await (await client.post("/v1/chat/completions", json=body)).json()
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert "city" in json.loads(call["function"]["arguments"])


async def test_tools_on_a_model_whose_template_lacks_them_is_a_400(client: TestClient) -> None:
    tool = {"type": "function", "function": {"name": "f"}}
    response = await client.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b", "tools": [tool]})
    assert response.status == 400
    assert_openai_error(await response.json(), "tools_not_supported")


async def test_completions_plain_echo_list_and_logprobs(client: TestClient) -> None:
    body = await (await client.post("/v1/completions", json={
        "model": "tiny", "prompt": ["hello", "the water"], "max_tokens": 5, "echo": True, "logprobs": 1})).json()
    assert body["object"] == "text_completion"
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["choices"][0]["text"].startswith("hello")
    assert body["choices"][1]["text"].startswith("the water")
    logprobs = body["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == 5 and logprobs["text_offset"][0] == len("hello")
    assert body["usage"]["completion_tokens"] == 10


async def test_completions_default_max_tokens_is_openais_16(client: TestClient) -> None:
    body = await (await client.post("/v1/completions", json={"model": "tiny", "prompt": "hello"})).json()
    assert body["usage"]["completion_tokens"] == 16


async def test_completions_stream_and_token_prompt(client: TestClient) -> None:
    tokens = (await (await client.post("/v1/tokenize", json={"model": "tiny", "content": "hello"})).json())["tokens"]
    hello = {"model": "tiny", "prompt": "hello", "max_tokens": 6}
    plain = await (await client.post("/v1/completions", json=hello)).json()
    by_ids = await (await client.post("/v1/completions", json={**hello, "prompt": tokens})).json()
    assert by_ids["choices"][0]["text"] == plain["choices"][0]["text"]
    response = await client.post("/v1/completions", json={**hello, "stream": True})
    events = await sse_events(response)
    assert "".join(e["choices"][0]["text"] for e in events) == plain["choices"][0]["text"]


async def test_suffix_without_fim_tokens_is_a_400(client: TestClient) -> None:
    response = await client.post("/v1/completions", json={"model": "tiny", "prompt": "a", "suffix": "b"})
    assert response.status == 400


async def test_edits(client: TestClient) -> None:
    body = await (await client.post("/v1/edits", json={"model": "tiny", "instruction": "fix", "input": "helo",
                                                      "max_tokens": 5})).json()
    assert body["object"] == "edit" and body["choices"][0]["text"]
    assert body["usage"]["completion_tokens"] == 5


async def test_embeddings_float_base64_and_dimensions(client: TestClient) -> None:
    floats = await (await client.post("/v1/embeddings", json={"model": "tiny", "input": ["hello", "world"]})).json()
    assert [d["index"] for d in floats["data"]] == [0, 1]
    vector = floats["data"][0]["embedding"]
    assert len(vector) == 64 and floats["usage"]["prompt_tokens"] > 0
    encoded = await (await client.post("/v1/embeddings", json={"model": "tiny", "input": "hello",
                                                                "encoding_format": "base64"})).json()
    decoded = struct.unpack("<64f", base64.b64decode(encoded["data"][0]["embedding"]))
    assert decoded == pytest.approx(vector, abs=1e-6)
    short_request = {"model": "tiny", "input": "hello", "dimensions": 8}
    short = await (await client.post("/v1/embeddings", json=short_request)).json()
    assert len(short["data"][0]["embedding"]) == 8


async def test_embeddings_on_a_model_without_them_is_a_400(client: TestClient) -> None:
    response = await client.post("/v1/embeddings", json={"model": "tiny-b", "input": "x"})
    assert response.status == 400
    assert_openai_error(await response.json(), "embeddings_not_supported")


async def test_model_is_required_when_several_are_served(client: TestClient) -> None:
    response = await client.post("/v1/chat/completions", json={"messages": CHAT["messages"]})
    assert response.status == 400
    assert_openai_error(await response.json(), "model_required")


async def test_health_ready_system(client: TestClient) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    await client.post("/v1/chat/completions", json=CHAT)
    system = await (await client.get("/system")).json()
    assert "llama-cpp" in system["backends"]
    assert [m["id"] for m in system["loaded_models"]] == ["tiny"]
    assert system["loaded_models"][0]["decode_tps"] > 0


async def test_concurrent_requests_share_batches_and_get_their_own_answers(client: TestClient) -> None:
    bodies = [{"model": "tiny", "prompt": p, "max_tokens": 30, "temperature": 0}
              for p in ("hello", "the water", "one two three", "the people of the world")]
    alone = [(await (await client.post("/v1/completions", json=b)).json())["choices"][0]["text"] for b in bodies]
    together = await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))
    assert [(await r.json())["choices"][0]["text"] for r in together] == alone
    system = await (await client.get("/system")).json()
    figures = system["loaded_models"][0]
    assert (figures["slots"], figures["in_flight"], figures["queued"]) == (4, 0, 0)


BAD_INPUTS = [
    ("/v1/chat/completions", b"{not json", "invalid_json"),
    ("/v1/chat/completions", b"[]", None),
    ("/v1/chat/completions", b"", "invalid_json"),
    ("/v1/chat/completions", json.dumps({"model": "tiny", "messages": []}).encode(), None),
    ("/v1/chat/completions", json.dumps({"model": "tiny", "messages": "hi"}).encode(), None),
    ("/v1/chat/completions", json.dumps({"model": "tiny", "messages": [{"role": "user"}]}).encode(), None),
    ("/v1/chat/completions",
     json.dumps({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}).encode(), None),
    ("/v1/chat/completions", json.dumps({**CHAT, "temperature": "hot"}).encode(), None),
    ("/v1/chat/completions", json.dumps({**CHAT, "temperature": 7}).encode(), None),
    ("/v1/chat/completions", json.dumps({**CHAT, "max_tokens": 10**12}).encode(), "context_length_exceeded"),
    ("/v1/chat/completions", json.dumps({**CHAT, "max_tokens": 0}).encode(), None),
    ("/v1/chat/completions", json.dumps({**CHAT, "max_tokens": "8"}).encode(), None),
    ("/v1/chat/completions", json.dumps({**CHAT, "n": 1000}).encode(), None),
    ("/v1/chat/completions", json.dumps({**CHAT, "frobnicate": True}).encode(), None),
    ("/v1/chat/completions", json.dumps({**CHAT, "grammar": "root ::= ("}).encode(), "invalid_grammar"),
    ("/v1/chat/completions", json.dumps({**CHAT, "grammar": 'root ::= "a"',
                                         "response_format": {"type": "json_object"}}).encode(),
     "conflicting_constraints"),
    ("/v1/chat/completions", json.dumps({**CHAT, "response_format": {"type": "json_schema"}}).encode(), None),
    ("/v1/chat/completions", json.dumps({**CHAT, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}).encode(), "unsupported_content"),
    ("/v1/chat/completions", json.dumps({**CHAT, "messages": [{"role": "user", "content": "the " * 600}]}).encode(),
     "context_length_exceeded"),
    ("/v1/chat/completions",
     json.dumps({**CHAT, "stream": True, "messages": [{"role": "user", "content": "the " * 600}]}).encode(),
     "context_length_exceeded"),
    ("/v1/completions", b"{", "invalid_json"),
    ("/v1/completions", json.dumps({"model": "tiny"}).encode(), None),
    ("/v1/completions", json.dumps({"model": "tiny", "prompt": 5}).encode(), None),
    ("/v1/completions", json.dumps({"model": "tiny", "prompt": []}).encode(), None),
    ("/v1/completions", json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 10**9}).encode(), None),
    ("/v1/completions", json.dumps({"model": "tiny", "prompt": "x", "best_of": 3}).encode(), None),
    ("/v1/completions", json.dumps({"model": "tiny", "prompt": "x", "extra": 1}).encode(), None),
    ("/v1/edits", json.dumps({"model": "tiny", "input": "x"}).encode(), None),
    ("/v1/edits", json.dumps({"model": "tiny", "instruction": 3}).encode(), None),
    ("/v1/embeddings", json.dumps({"model": "tiny"}).encode(), None),
    ("/v1/embeddings", json.dumps({"model": "tiny", "input": ""}).encode(), None),
    ("/v1/embeddings", json.dumps({"model": "tiny", "input": [1.5]}).encode(), None),
    ("/v1/embeddings", json.dumps({"model": "tiny", "input": "x", "encoding_format": "hex"}).encode(), None),
    ("/v1/embeddings", json.dumps({"model": "tiny", "input": "x", "dimensions": 1000}).encode(), None),
    ("/v1/embeddings", b"nope", "invalid_json"),
    ("/v1/tokenize", json.dumps({"model": "tiny"}).encode(), None),
    ("/v1/tokenize", json.dumps({"model": "tiny", "content": 1}).encode(), None),
]


@pytest.mark.parametrize(("path", "body", "code"), BAD_INPUTS)
async def test_bad_input_is_a_clean_400(client: TestClient, path: str, body: bytes, code: str | None) -> None:
    response = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400, await response.text()
    assert_openai_error(await response.json(), code)


@pytest.mark.parametrize("path",
                         ["/v1/chat/completions", "/v1/completions", "/v1/edits", "/v1/embeddings", "/v1/tokenize"])
async def test_unknown_model_is_404_on_every_endpoint(client: TestClient, path: str) -> None:
    body = {"model": "nope", "messages": CHAT["messages"], "prompt": "x", "input": "x", "instruction": "x",
            "content": "x"}
    allowed = {
        "/v1/chat/completions": ("model", "messages"),
        "/v1/completions": ("model", "prompt"),
        "/v1/edits": ("model", "instruction", "input"),
        "/v1/embeddings": ("model", "input"),
        "/v1/tokenize": ("model", "content"),
    }[path]
    response = await client.post(path, json={k: body[k] for k in allowed})
    assert response.status == 404
    assert_openai_error(await response.json(), "model_not_found")


async def test_unknown_route_and_wrong_method_are_json(client: TestClient) -> None:
    missing = await client.get("/v1/nothing")
    assert missing.status == 404
    assert_openai_error(await missing.json())
    wrong = await client.get("/v1/chat/completions")
    assert wrong.status == 405
    assert_openai_error(await wrong.json())


async def test_body_too_large_is_413(client: TestClient) -> None:
    response = await client.post("/v1/chat/completions", data=b"x" * (17 * 1024 * 1024))
    assert response.status == 413
    assert_openai_error(await response.json(), "request_too_large")


async def test_full_queue_is_503_with_retry_after(client: TestClient) -> None:
    # tiny-b lets one request wait behind the running one; a burst of six gets some refused.
    body = {"model": "tiny-b", "prompt": "x", "max_tokens": 200}
    responses = await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(6)))
    statuses = sorted(r.status for r in responses)
    assert set(statuses) == {200, 503} and statuses.count(503) <= 5
    refused = next(r for r in responses if r.status == 503)
    assert int(refused.headers["Retry-After"]) >= 1
    assert_openai_error(await refused.json(), "overloaded")


async def test_api_key_required_except_health(keyed_client: TestClient) -> None:
    assert (await keyed_client.get("/healthz")).status == 200
    assert (await keyed_client.get("/readyz")).status == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic sesame"}):
        response = await keyed_client.get("/v1/models", headers=headers)
        assert response.status == 401
        assert_openai_error(await response.json(), "invalid_api_key")
    assert (await keyed_client.post("/v1/chat/completions", json=CHAT)).status == 401
    assert (await keyed_client.get("/system")).status == 401
    ok = await keyed_client.get("/v1/models", headers={"Authorization": "Bearer sesame"})
    assert ok.status == 200


async def test_client_disconnect_stops_generation(client: TestClient) -> None:
    body = {"model": "tiny-b", "prompt": "x", "max_tokens": 240, "stream": True}
    response = await client.post("/v1/completions", json=body)
    await response.content.readline()
    response.close()
    await asyncio.sleep(0.3)
    # The model thread is free again: a new request is served at once, not after 240 tokens.
    quick = await asyncio.wait_for(client.post("/v1/completions", json={**body, "stream": False, "max_tokens": 2}), 5)
    assert quick.status == 200


async def test_continue_final_message_extends_the_assistant_beginning(client) -> None:
    """vLLM's extension, used to continue an answer another node began: the beginning is the
    end of the prompt (the turn is not closed), and the answer is only what follows."""
    user = {"role": "user", "content": "hello world"}
    head = "the people of the world"

    async def usage_and_text(messages: list[dict], **extra: object) -> tuple[int, str]:
        response = await client.post("/v1/chat/completions", json={
            "model": "tiny", "messages": messages, "max_tokens": 4, **extra})
        assert response.status == 200, await response.text()
        body = await response.json()
        return body["usage"]["prompt_tokens"], body["choices"][0]["message"]["content"]

    plain, _ = await usage_and_text([user])
    closed, _ = await usage_and_text([user, {"role": "assistant", "content": head}, user])
    continued, text = await usage_and_text([user, {"role": "assistant", "content": head}],
                                           continue_final_message=True)
    head_tokens = len((await (await client.post("/v1/tokenize", json={"model": "tiny", "content": head})).json())[
        "tokens"])
    # The head joins the prompt (give or take a token where its first word meets the template).
    assert abs(continued - (plain + head_tokens)) <= 2
    assert continued < closed and text
    refused = await client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": [user], "continue_final_message": True,
    })
    assert refused.status == 400
