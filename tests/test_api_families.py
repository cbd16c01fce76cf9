"""Anthropic's Messages and OpenAI's Responses across a swarm of real `p2pai start` processes on
127.0.0.1: against the serving node and through an entry node, stored responses answered by the
node that has them and surviving a SIGKILL, and a stream whose node dies ending in its family's way.

A routes only (no model); B serves `tiny` (with a tools template, 4096 tokens of context).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from conftest import TOOLS_TEMPLATE, NodeProcess
from event_order import check_anthropic, check_responses, parse_sse
from p2pai.token import new_token
from test_swarm import online_peers, wait_for

HELLO = [{"role": "user", "content": "hello"}]
CITY = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"]}
ANTHROPIC_TOOL = {"name": "get_weather", "input_schema": CITY}
RESPONSES_TOOL = {"type": "function", "name": "get_weather", "parameters": CITY}


@pytest.fixture
def swarm(start_node, models_dir: Path, tmp_path: Path) -> dict[str, NodeProcess]:
    models = tmp_path / "b-models"
    models.mkdir()
    (models / "tiny.yaml").write_text(
        f"name: tiny\nparameters:\n  model: {models_dir / 'tiny.gguf'}\n  temperature: 0\ncontext_size: 4096\n"
        "template:\n  chat: |-\n" + "".join(f"    {line}\n" for line in TOOLS_TEMPLATE.splitlines()))
    token = new_token()
    a = start_node("--token", token, "--no-default-model", "--models-dir", str(models_dir / "none"), name="a")
    b = start_node("--token", token, "--bootstrap", a.bootstrap_addr(), "--models-dir", str(models),
                   "--threads", "1", "--name", "b", name="b")
    wait_for(lambda: len(online_peers(a)) == 1, 10.0)
    return {"a": a, "b": b}


def messages_api(node: NodeProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=node.url, api_key="unused", max_retries=0, timeout=30)


def responses_api(node: NodeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def raw_stream(node: NodeProcess, path: str, **body: Any) -> tuple[httpx.Response, list[tuple[str, dict]]]:
    response = httpx.post(node.url + path, json={"model": "tiny", "stream": True, **body}, timeout=30)
    assert response.status_code == 200, response.text
    return response, parse_sse(response.content)


@pytest.mark.parametrize("via", ["b", "a"])
def test_messages_on_the_node_and_through_the_entry(swarm, via: str) -> None:
    node = swarm[via]
    api = messages_api(node)
    message = api.messages.create(model="tiny", max_tokens=12, messages=HELLO)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 12
    response, events = raw_stream(node, "/v1/messages", max_tokens=12, messages=HELLO)
    check_anthropic(events)  # complete: no error event added by the entry
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta") == message.content[0].text
    if via == "a":
        assert response.headers["X-P2PAI-Served-By"] == swarm["b"].peer_id()
    stop = message.content[0].text[4:7]
    if message.content[0].text.find(stop) == 4:
        stopped = api.messages.create(model="tiny", max_tokens=12, messages=HELLO, stop_sequences=[stop])
        assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", stop)
    choice = {"type": "tool", "name": "get_weather"}
    call = api.messages.create(model="tiny", max_tokens=60, messages=HELLO, tools=[ANTHROPIC_TOOL],
                               tool_choice=choice)
    assert call.stop_reason == "tool_use" and call.content[0].input["city"] in ("Paris", "Rome")
    _, events = raw_stream(node, "/v1/messages", max_tokens=60, messages=HELLO, tools=[ANTHROPIC_TOOL],
                           tool_choice=choice)
    check_anthropic(events)
    assert api.messages.count_tokens(model="tiny", messages=HELLO).input_tokens == message.usage.input_tokens
    with pytest.raises(anthropic.NotFoundError) as missing:
        api.messages.create(model="nope", max_tokens=2, messages=HELLO)
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as refused:  # refused by B, relayed as B said it
        api.messages.create(model="tiny", max_tokens=2, messages=HELLO, tools=[ANTHROPIC_TOOL],
                            tool_choice={"type": "tool", "name": "other"})
    assert refused.value.body["type"] == "error" and refused.value.response.headers["X-P2PAI-Error-Code"]


@pytest.mark.parametrize("via", ["b", "a"])
def test_responses_on_the_node_and_through_the_entry(swarm, via: str) -> None:
    node = swarm[via]
    api = responses_api(node)
    response = api.responses.create(model="tiny", input="hello", max_output_tokens=12)
    assert response.status == "incomplete" and response.usage.output_tokens == 12
    _, events = raw_stream(node, "/v1/responses", input="hello", max_output_tokens=12)
    check_responses(events)
    assert "".join(d["delta"] for n, d in events if n == "response.output_text.delta") == response.output_text
    call = api.responses.create(model="tiny", input="weather?", tools=[RESPONSES_TOOL], max_output_tokens=60,
                                tool_choice={"type": "function", "name": "get_weather"})
    assert call.status == "completed" and json.loads(call.output[0].arguments)["city"] in ("Paris", "Rome")
    follow = api.responses.create(model="tiny", input="and?", previous_response_id=response.id, max_output_tokens=2)
    assert follow.usage.input_tokens > response.usage.total_tokens
    # Each node answers for every stored response: the id names the node that has it.
    for other in ("a", "b"):
        assert responses_api(swarm[other]).responses.retrieve(response.id).output_text == response.output_text
    ident = events[0][1]["response"]["id"]
    replay = httpx.get(f"{swarm['a'].url}/v1/responses/{ident}", params={"stream": "true", "starting_after": 2})
    assert parse_sse(replay.content) == events[3:]
    background = api.responses.create(model="tiny", input="hello", max_output_tokens=4000, background=True)
    assert background.status == "queued"
    assert api.responses.retrieve(background.id).status in ("queued", "in_progress")
    assert api.responses.cancel(background.id).status == "cancelled"
    assert responses_api(swarm["a"]).responses.retrieve(background.id).status == "cancelled"
    responses_api(swarm["a"]).responses.delete(response.id)
    for other in ("a", "b"):
        with pytest.raises(openai.NotFoundError):
            responses_api(swarm[other]).responses.retrieve(response.id)
    unknown = "resp_" + "0" * 12 + "f" * 32  # no node's tag: every node is asked
    with pytest.raises(openai.NotFoundError):
        api.responses.retrieve(unknown)


def test_stored_responses_survive_a_sigkill(swarm) -> None:
    a, b = swarm["a"], swarm["b"]
    _, events = raw_stream(a, "/v1/responses", input="hello", max_output_tokens=8)
    stored = events[-1][1]["response"]
    running = responses_api(a).responses.create(model="tiny", input="hello", max_output_tokens=4000, background=True)
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(10)
    b.restart()
    b.wait_ready()
    wait_for(lambda: len(online_peers(a)) == 1, 15.0)
    for node in (a, b):
        again = httpx.get(f"{node.url}/v1/responses/{stored['id']}", timeout=10).json()
        assert again == stored
        assert parse_sse(httpx.get(f"{node.url}/v1/responses/{stored['id']}?stream=true", timeout=10).content) == events
        interrupted = responses_api(node).responses.retrieve(running.id)
        assert interrupted.status == "failed" and interrupted.error.code == "node_stopped"


@pytest.mark.parametrize("family", ["messages", "responses"])
def test_a_stream_whose_node_dies_ends_in_its_familys_way(swarm, family: str) -> None:
    a, b = swarm["a"], swarm["b"]
    path, body = (("/v1/messages", {"max_tokens": 4000, "messages": HELLO}) if family == "messages" else
                  ("/v1/responses", {"input": "hello", "max_output_tokens": 4000}))
    received = b""
    with httpx.stream("POST", a.url + path, json={"model": "tiny", "stream": True, **body}, timeout=30) as response:
        chunks = response.iter_raw()
        while received.count(b"\n\n") < 4:
            received += next(chunks)
        b.proc.send_signal(signal.SIGSTOP)  # frozen first, so the answer is surely unfinished
        b.proc.send_signal(signal.SIGKILL)
        failed_at = time.monotonic()
        for chunk in chunks:
            received += chunk
    assert time.monotonic() - failed_at < 5
    events = parse_sse(received)
    if family == "messages":
        check_anthropic(events, failed=True)
        assert events[-1][1]["error"]["type"] == "api_error"
    else:
        names = [name for name, _ in events]
        assert names[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                             "response.content_part.added"]
        assert set(names[4:-2]) == {"response.output_text.delta"} and names[-2:] == ["error", "response.failed"]
        assert events[-1][1]["response"]["status"] == "failed"
        assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
