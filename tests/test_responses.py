"""OpenAI's Responses API on one node (the real app in-process, real llama.cpp on the tiny model),
through the official `openai` client's `responses` API and as raw server-sent events.
Stored responses surviving a restart, and responses across a swarm: test_api_families.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import openai
import pytest
from aiohttp.test_utils import TestClient

from event_order import check_responses, parse_sse

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"]}}


@pytest.fixture
async def api(client: TestClient) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0) as sdk:
        yield sdk


async def raw_stream(client: TestClient, path: str = "/v1/responses", **body: object) -> list[tuple[str, dict]]:
    response = await client.post(path, json={"model": "tiny", "stream": True, **body})
    assert response.status == 200 and response.content_type == "text/event-stream"
    return parse_sse(await response.read())


async def test_a_response_and_its_stream_say_the_same(client: TestClient, api: openai.AsyncOpenAI) -> None:
    response = await api.responses.create(model="tiny", input="hello", instructions="Be brief.",
                                          max_output_tokens=12)
    assert response.id.startswith("resp_") and response.object == "response" and response.model == "tiny"
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 12 and response.instructions == "Be brief."
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and response.output_text
    events = await raw_stream(client, input="hello", instructions="Be brief.", max_output_tokens=12)
    check_responses(events)
    text = "".join(data["delta"] for name, data in events if name == "response.output_text.delta")
    assert text == response.output_text  # temperature 0 in tiny's config
    assert events[0][1]["response"]["status"] == "in_progress"
    assert events[-1][1]["response"]["output"][0]["content"][0]["text"] == text
    stream = await api.responses.create(model="tiny", input="hello", instructions="Be brief.",
                                        max_output_tokens=12, stream=True)
    assert [event.type async for event in stream] == [name for name, _ in events]
    # input as items, the instructions as a developer message: the same prompt
    items = await api.responses.create(model="tiny", max_output_tokens=12, input=[
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}])
    assert items.output_text == response.output_text and items.usage.input_tokens == response.usage.input_tokens


async def test_previous_response_id_carries_the_conversation(client: TestClient, api: openai.AsyncOpenAI) -> None:
    first = await api.responses.create(model="tiny", input="hello", max_output_tokens=5)
    second = await api.responses.create(model="tiny", input="and then?", previous_response_id=first.id,
                                        max_output_tokens=5)
    assert second.previous_response_id == first.id
    alone = await api.responses.create(model="tiny", input="and then?", max_output_tokens=5)
    assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens
    with pytest.raises(openai.BadRequestError) as missing:
        await api.responses.create(model="tiny", input="x", previous_response_id="resp_nope")
    assert missing.value.body["code"] == "previous_response_not_found"
    unstored = await api.responses.create(model="tiny", input="hello", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        await api.responses.retrieve(unstored.id)


async def test_a_forced_function_call_and_its_output_sent_back(client: TestClient, api: openai.AsyncOpenAI) -> None:
    choice = {"type": "function", "name": "get_weather"}
    response = await api.responses.create(model="tiny", input="weather?", tools=[WEATHER], tool_choice=choice,
                                          max_output_tokens=60)
    assert response.status == "completed"
    [call] = response.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert json.loads(call.arguments)["city"] in ("Paris", "Rome") and call.call_id.startswith("call_")
    events = await raw_stream(client, input="weather?", tools=[WEATHER], tool_choice=choice, max_output_tokens=60)
    check_responses(events)
    assert "response.function_call_arguments.delta" in [name for name, _ in events]
    follow = await api.responses.create(model="tiny", max_output_tokens=3, previous_response_id=response.id,
                                        tools=[WEATHER], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert follow.usage.input_tokens > response.usage.input_tokens


async def test_text_format_json_schema(client: TestClient, api: openai.AsyncOpenAI) -> None:
    schema = {"type": "object", "properties": {"a": {"enum": [1, 2, 3]}}, "required": ["a"]}
    response = await api.responses.create(
        model="tiny", input="x", max_output_tokens=40,
        text={"format": {"type": "json_schema", "name": "pick", "schema": schema}})
    assert json.loads(response.output_text)["a"] in (1, 2, 3)
    assert response.text.format.type == "json_schema" and response.text.format.schema_ == schema


async def test_background_poll_cancel_get_replay_delete(client: TestClient, api: openai.AsyncOpenAI) -> None:
    done = await api.responses.create(model="tiny", input="hello", max_output_tokens=10, background=True)
    assert done.status == "queued" and done.background
    for _ in range(100):
        polled = await api.responses.retrieve(done.id)
        if polled.status not in ("queued", "in_progress"):
            break
        await asyncio.sleep(0.02)
    assert polled.status == "incomplete" and polled.usage.output_tokens == 10
    long = await api.responses.create(model="tiny", input="hello", max_output_tokens=480, background=True)
    cancelled = await api.responses.cancel(long.id)
    assert cancelled.status == "cancelled"
    assert (await api.responses.retrieve(long.id)).status == "cancelled"
    replay = await client.get(f"/v1/responses/{long.id}", params={"stream": "true"})
    events = parse_sse(await replay.read())
    assert events[-1][1]["code"] == "response_cancelled"  # the stream ends, saying why
    with pytest.raises(openai.BadRequestError):
        await api.responses.cancel((await api.responses.create(model="tiny", input="x", max_output_tokens=1)).id)
    # Replay: a stored stream again, whole or after a sequence number.
    whole = await raw_stream(client, input="hello", max_output_tokens=6)
    ident = whole[0][1]["response"]["id"]
    again = parse_sse(await (await client.get(f"/v1/responses/{ident}?stream=true")).read())
    assert again == whole
    tail = parse_sse(await (await client.get(f"/v1/responses/{ident}?stream=true&starting_after=4")).read())
    assert tail == whole[5:]
    replayed = await api.responses.retrieve(ident, stream=True, starting_after=4)
    assert [e.sequence_number async for e in replayed] == [d["sequence_number"] for _, d in whole[5:]]
    await api.responses.delete(ident)
    with pytest.raises(openai.NotFoundError) as gone:
        await api.responses.retrieve(ident)
    assert gone.value.body["code"] == "response_not_found"


async def test_request_errors(client: TestClient, api: openai.AsyncOpenAI) -> None:
    for body, param in [
        ({"model": "tiny"}, "input"),
        ({"model": "tiny", "input": "x", "tools": [{"type": "web_search"}]}, "tools"),
        ({"model": "tiny", "input": "x", "background": True, "store": False}, "background"),
        ({"model": "tiny", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "input"),
        ({"model": "tiny", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ]:
        response = await client.post("/v1/responses", json=body)
        error = (await response.json())["error"]
        assert response.status == 400 and error["param"].startswith(param), error
    missing = await client.post("/v1/responses", json={"model": "nope", "input": "x"})
    assert missing.status == 404
