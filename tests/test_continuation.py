"""Which broken streams can be continued, and how the rest is asked for and rewritten."""

from __future__ import annotations

import json

from p2pai.routing.continuation import Progress, Rewriter, continuable, continuation_request, progress


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_only_plain_single_text_streams_are_continuable() -> None:
    assert continuable("/v1/completions", body(model="m", prompt="hi", stream=True)) is not None
    assert continuable("/v1/chat/completions", body(model="m", messages=[], stream=True)) is not None
    for path, request in [
        ("/v1/completions", body(model="m", prompt="hi")),  # not streamed
        ("/v1/completions", body(model="m", prompt=[1, 2], stream=True)),  # token prompt
        ("/v1/completions", body(model="m", prompt="hi", stream=True, n=2)),
        ("/v1/completions", body(model="m", prompt="hi", stream=True, logprobs=1)),
        ("/v1/chat/completions", body(model="m", messages=[], stream=True, tools=[{"type": "function"}])),
        ("/v1/chat/completions", body(model="m", messages=[], stream=True, response_format={"type": "json_object"})),
        ("/v1/embeddings", body(model="m", input="x", stream=True)),
        ("/v1/completions", b"not json"),
    ]:
        assert continuable(path, request) is None, (path, request)


def test_progress_reads_complete_events_only() -> None:
    events = [
        {"id": "c1", "created": 5, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"id": "c1", "created": 5, "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"id": "c1", "created": 5, "choices": [{"index": 0, "delta": {"content": "lo"}}]},
    ]
    raw = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b'data: {"id": "c1", "cho'
    assert progress(raw) == Progress("c1", 5, "Hello", 2, False)


def test_the_rest_is_asked_for_with_the_text_sent_and_the_tokens_left() -> None:
    done = Progress("c1", 5, " world", 3, False)
    completion = json.loads(continuation_request("/v1/completions", {"prompt": "hello", "max_tokens": 10}, done))
    assert completion["prompt"] == "hello world" and completion["max_tokens"] == 7
    chat = json.loads(continuation_request(
        "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5}, done))
    assert chat["messages"][-1] == {"role": "assistant", "content": " world"}
    assert chat["continue_final_message"] is True and chat["max_completion_tokens"] == 2
    assert continuation_request("/v1/completions", {"prompt": "hello", "max_tokens": 3}, done) is None
    assert json.loads(continuation_request("/v1/completions", {"prompt": "x"}, done))["max_tokens"] == 13


def test_the_continuation_reads_as_the_same_stream() -> None:
    rewriter = Rewriter(Progress("c1", 5, "Hel", 2, False), chat=True)
    role = {"id": "c2", "created": 9, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    text = {"id": "c2", "created": 9, "choices": [{"index": 0, "delta": {"content": "lo"}}]}
    usage = {"id": "c2", "created": 9, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 4,
                                                                "total_tokens": 16}}
    stream = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in (role, text, usage)) + b"data: [DONE]\n\n"
    out = rewriter.feed(stream[:30]) + rewriter.feed(stream[30:])
    events = [json.loads(e[6:]) for e in out.split(b"\n\n") if e.startswith(b"data: {")]
    assert [e["id"] for e in events] == ["c1", "c1"] and {e["created"] for e in events} == {5}
    assert events[0]["choices"][0]["delta"] == {"content": "lo"}  # no second role delta
    assert events[1]["usage"]["completion_tokens"] == 6 and events[1]["usage"]["prompt_tokens"] == 10
    assert out.endswith(b"data: [DONE]\n\n")
