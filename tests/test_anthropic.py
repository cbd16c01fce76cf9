"""Anthropic's Messages API on one node (the real app in-process, real llama.cpp on the tiny model),
through the official `anthropic` client and as raw server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import pytest
from aiohttp.test_utils import TestClient

from conftest import _client
from event_order import check_anthropic, parse_sse

HELLO = [{"role": "user", "content": "hello"}]
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}},
                            "required": ["city"]}}


def sdk(client: TestClient, key: str = "unused") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=str(client.make_url("")).rstrip("/"), api_key=key, max_retries=0)


@pytest.fixture
async def api(client: TestClient) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with sdk(client) as opened:
        yield opened


async def raw_stream(client: TestClient, **body: object) -> list[tuple[str, dict]]:
    response = await client.post("/v1/messages", json={"model": "tiny", "stream": True, **body})
    assert response.status == 200 and response.content_type == "text/event-stream"
    return parse_sse(await response.read())


async def test_a_message_and_its_stream_say_the_same(client: TestClient, api: anthropic.AsyncAnthropic) -> None:
    message = await api.messages.create(model="tiny", max_tokens=12, messages=HELLO)
    assert message.id.startswith("msg_") and message.role == "assistant" and message.model == "tiny"
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None
    assert message.usage.output_tokens == 12 and message.usage.input_tokens > 0
    async with api.messages.stream(model="tiny", max_tokens=12, messages=HELLO) as stream:
        final = await stream.get_final_message()
    assert final.content[0].text == message.content[0].text  # temperature 0 in tiny's config
    assert final.usage.input_tokens == message.usage.input_tokens and final.usage.output_tokens == 12
    events = await raw_stream(client, max_tokens=12, messages=HELLO)
    check_anthropic(events)
    assert "ping" in [name for name, _ in events]
    text = "".join(d["delta"]["text"] for name, d in events if name == "content_block_delta")
    assert text == message.content[0].text
    assert events[-2][1]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}


async def test_system_prompt_and_count_tokens(client: TestClient, api: anthropic.AsyncAnthropic) -> None:
    plain = await api.messages.count_tokens(model="tiny", messages=HELLO)
    message = await api.messages.create(model="tiny", max_tokens=1, messages=HELLO)
    assert plain.input_tokens == message.usage.input_tokens
    system = await api.messages.count_tokens(model="tiny", messages=HELLO,
                                             system=[{"type": "text", "text": "Be brief."}])
    assert system.input_tokens > plain.input_tokens
    with_tools = await api.messages.count_tokens(model="tiny", messages=HELLO, tools=[WEATHER])
    assert with_tools.input_tokens > plain.input_tokens  # tiny's template shows the tools


async def test_a_stop_sequence_ends_the_message_and_is_named(client: TestClient, api: anthropic.AsyncAnthropic) -> None:
    whole = (await api.messages.create(model="tiny", max_tokens=20, messages=HELLO)).content[0].text
    stop = whole[5:8]
    assert whole.find(stop) == 5, "pick a stop string that first occurs where it was cut"
    message = await api.messages.create(model="tiny", max_tokens=20, messages=HELLO, stop_sequences=["zzz", stop])
    assert message.content[0].text == whole[:5]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", stop)
    events = await raw_stream(client, max_tokens=20, messages=HELLO, stop_sequences=[stop])
    check_anthropic(events)
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": stop}


async def test_a_forced_tool_call(client: TestClient, api: anthropic.AsyncAnthropic) -> None:
    choice = {"type": "tool", "name": "get_weather"}
    message = await api.messages.create(model="tiny", max_tokens=60, messages=HELLO, tools=[WEATHER],
                                        tool_choice=choice)
    assert message.stop_reason == "tool_use"
    [call] = message.content
    assert call.type == "tool_use" and call.name == "get_weather" and call.input["city"] in ("Paris", "Rome")
    assert call.id.startswith("toolu_")
    events = await raw_stream(client, max_tokens=60, messages=HELLO, tools=[WEATHER], tool_choice=choice)
    check_anthropic(events)
    assert events[1][1]["content_block"] == {"type": "tool_use", "id": events[1][1]["content_block"]["id"],
                                             "name": "get_weather", "input": {}}
    async with api.messages.stream(model="tiny", max_tokens=60, messages=HELLO, tools=[WEATHER],
                                   tool_choice=choice) as stream:
        final = await stream.get_final_message()
    assert final.content[0].input == call.input and final.stop_reason == "tool_use"
    # The answer goes back as a tool result, and the conversation goes on.
    follow = [*HELLO, {"role": "assistant", "content": [c.model_dump() for c in message.content]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]}]
    assert (await api.messages.create(model="tiny", max_tokens=4, messages=follow)).stop_reason == "max_tokens"


async def test_errors_have_anthropic_shape(client: TestClient, api: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        await api.messages.create(model="nope", max_tokens=4, messages=HELLO)
    assert missing.value.body == {"type": "error", "error": {"type": "not_found_error",
                                                             "message": "The model `nope` does not exist"}}
    for body, words in [
        ({"model": "tiny", "messages": HELLO}, "max_tokens"),  # required
        ({"model": "tiny", "max_tokens": 4, "messages": HELLO, "temperature": 1.5}, "temperature"),
        ({"model": "tiny", "max_tokens": 4, "messages": HELLO, "bogus": 1}, "bogus"),
        ({"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]}, "image"),
        ({"model": "tiny", "max_tokens": 4, "messages": HELLO, "tools": [WEATHER],
          "tool_choice": {"type": "tool", "name": "other"}}, "other"),
    ]:
        response = await client.post("/v1/messages", json=body)
        error = await response.json()
        assert response.status == 400, error
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert words in error["error"]["message"]
    openai_shaped = await (await client.post("/v1/chat/completions", json={"messages": "x"})).json()
    assert "type" not in openai_shaped and "param" in openai_shaped["error"]


@pytest.fixture
async def keyed(models_dir: Path, tmp_path: Path) -> AsyncIterator[TestClient]:
    async with _client(models_dir, tmp_path, frozenset({"sesame"})) as c:
        yield c


async def test_the_key_may_come_as_x_api_key(keyed: TestClient) -> None:
    async with sdk(keyed, "wrong") as wrong, sdk(keyed, "sesame") as right:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await wrong.messages.create(model="tiny", max_tokens=2, messages=HELLO)
        message = await right.messages.create(model="tiny", max_tokens=2, messages=HELLO)  # sent as x-api-key
    assert refused.value.body["error"]["type"] == "authentication_error"
    assert message.usage.output_tokens == 2
