"""The documented event order of Anthropic's and the Responses API's streams, as checks on raw SSE bodies.

Anthropic (docs "Streaming Messages"): message_start; per content block content_block_start,
content_block_delta..., content_block_stop (blocks indexed from 0, deltas of the block's kind);
message_delta; message_stop; `ping` events anywhere; an `error` event may end a failed stream.

Responses (docs "Streaming API responses"): response.created, response.in_progress; per output item
response.output_item.added, then for a message response.content_part.added, response.output_text.delta...,
response.output_text.done, response.content_part.done, or for a function call
response.function_call_arguments.delta..., response.function_call_arguments.done; then
response.output_item.done; and last response.completed, .incomplete or .failed. Sequence numbers
count from 0 without gaps.
"""

from __future__ import annotations

import json
import re
from typing import Any

Event = tuple[str, dict[str, Any]]


def parse_sse(body: bytes) -> list[Event]:
    """Each event's `event:` name and JSON data; the body must end at an event's end."""
    assert body.endswith(b"\n\n"), body[-200:]
    events = []
    for block in body.split(b"\n\n")[:-1]:
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n"))
        assert set(lines) == {b"event", b"data"}, block
        events.append((lines[b"event"].decode(), json.loads(lines[b"data"])))
    return events


_ANTHROPIC = {"message_start": "S", "content_block_start": "B", "content_block_delta": "D",
              "content_block_stop": "T", "message_delta": "M", "message_stop": "X", "error": "E"}
_DELTA_OF = {"text": "text_delta", "tool_use": "input_json_delta"}


def check_anthropic(events: list[Event], failed: bool = False) -> None:
    for name, data in events:
        assert data["type"] == name
    kept = [(name, data) for name, data in events if name != "ping"]
    letters = "".join(_ANTHROPIC[name] for name, _ in kept)
    pattern = r"S(BD*T)*(BD*)?E" if failed else r"S(BD*T)*MX"  # an error may cut a block short
    assert re.fullmatch(pattern, letters), letters
    blocks: list[str] = []
    for name, data in kept:
        if name == "content_block_start":
            assert data["index"] == len(blocks)
            blocks.append(data["content_block"]["type"])
        elif name in ("content_block_delta", "content_block_stop"):
            assert data["index"] == len(blocks) - 1
            if name == "content_block_delta":
                assert data["delta"]["type"] == _DELTA_OF[blocks[-1]]


_RESPONSES = {"response.created": "C", "response.in_progress": "I", "response.output_item.added": "A",
              "response.content_part.added": "P", "response.output_text.delta": "O",
              "response.output_text.done": "t", "response.content_part.done": "p",
              "response.function_call_arguments.delta": "F", "response.function_call_arguments.done": "f",
              "response.output_item.done": "D", "response.completed": "Z", "response.incomplete": "N",
              "response.failed": "L", "error": "E"}


def check_responses(events: list[Event], ending: str = "ZN") -> None:
    """A whole stream; ``ending``: the letters it may end with (see _RESPONSES). A replay is checked
    against the tail of the whole stream instead."""
    for number, (name, data) in enumerate(events):
        assert data["type"] == name
        assert data["sequence_number"] == number
    letters = "".join(_RESPONSES[name] for name, _ in events)
    assert re.fullmatch(rf"CI(A(PO*tp|F*f)D)*[{ending}]", letters), letters
