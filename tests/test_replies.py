"""api/replies.py serializes with pydantic-core's SchemaSerializer directly: this fails loudly if an
upgrade of pydantic makes its bytes differ from model_dump_json's."""

from __future__ import annotations

import json

from p2pai.api.replies import json_bytes, sse_event
from p2pai.protocol.openai import ChatChunkChoice, ChatCompletionChunk, ChatDelta, Completion, CompletionChoice


def test_the_bytes_are_model_dump_json_s() -> None:
    chunk = ChatCompletionChunk(id="chatcmpl-1", created=1, model="tiny", choices=[
        ChatChunkChoice(index=0, delta=ChatDelta(content=" é 😀 \"\n"), logprobs=None, finish_reason=None)])
    completion = Completion(id="cmpl-1", created=1, model="tiny", choices=[
        CompletionChoice(index=0, text="x", finish_reason="stop")])
    for model in (chunk, completion):
        assert json_bytes(model) == model.model_dump_json().encode()
    assert sse_event(chunk) == b"data: " + chunk.model_dump_json().encode() + b"\n\n"
    sent = json.loads(json_bytes(chunk))
    assert sent["choices"][0] == {"index": 0, "delta": {"content": " é 😀 \"\n"}, "logprobs": None,
                                  "finish_reason": None}  # omitted() fields left out, the others null
    assert "usage" not in sent
    assert "é".encode() in json_bytes(chunk)  # UTF-8, not \u escapes (as json.dumps(ensure_ascii=False) sent)
