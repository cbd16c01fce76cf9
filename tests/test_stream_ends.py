"""The relay knows a complete stream of each API family however its bytes are cut, and the entry
ends a broken one in its family's way (routing/streams.py)."""

from __future__ import annotations

import json

import pytest

from event_order import parse_sse
from p2pai.routing.relay import Pieces
from p2pai.routing.streams import ANTHROPIC, OPENAI, RESPONSES, StreamKind, stream_kind


def named(name: str, **data: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps({"type": name, **data}).encode() + b"\n\n"


CHAT = [b'data: {"choices": [{"delta": {"content": "a\\n\\nb"}}]}\n\n', b"data: [DONE]\n\n"]
MESSAGES = [named("message_start", message={}), named("content_block_start", index=0), named("ping"),
            named("content_block_delta", index=0), named("content_block_stop", index=0),
            named("message_delta", delta={}), named("message_stop")]
RESPONSE = {"id": "resp_1", "status": "in_progress", "output": []}
RESPONSES_EVENTS = [named("response.created", response=RESPONSE, sequence_number=0),
                    named("response.in_progress", response=RESPONSE, sequence_number=1),
                    named("response.output_text.delta", delta="x" * 300, sequence_number=2),
                    named("response.completed", response={**RESPONSE, "status": "completed"}, sequence_number=3)]


def done_after_each_cut(kind: StreamKind, body: bytes, size: int) -> list[bool]:
    pieces = Pieces(None, None, kind.final)
    sent = b""
    states = []
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        sent += piece if pieces.plain(piece) else pieces.next(piece)
        states.append(pieces.done)
    assert sent + pieces.held == body
    return states


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
@pytest.mark.parametrize(("kind", "events"), [(OPENAI, CHAT), (ANTHROPIC, MESSAGES), (RESPONSES, RESPONSES_EVENTS)])
def test_only_the_last_event_completes_a_stream_however_it_is_cut(kind: StreamKind, events: list[bytes],
                                                                  size: int) -> None:
    body = b"".join(events)
    states = done_after_each_cut(kind, body, size)
    assert states[-1]
    assert not any(states[:-1])  # no earlier cut looked complete
    assert not done_after_each_cut(kind, b"".join(events[:-1]), size)[-1]


@pytest.mark.parametrize(("kind", "events"), [(OPENAI, CHAT), (ANTHROPIC, MESSAGES), (RESPONSES, RESPONSES_EVENTS)])
def test_only_the_last_event_completes_a_stream_relayed_one_event_per_piece(kind: StreamKind,
                                                                           events: list[bytes]) -> None:
    """The usual cut (a peer writes each event at once), which the relay checks the quickest way."""
    pieces = Pieces(None, None, kind.final)
    states = []
    for event in events:
        sent = event if pieces.plain(event) else pieces.next(event)
        assert sent == (b"" if event is events[-1] else event)
        states.append(pieces.done)
    assert states[-1] and not any(states[:-1])
    assert pieces.held == events[-1]


def test_an_error_event_ends_anthropic_and_responses_streams_but_not_chat() -> None:
    error = named("error", error={"type": "api_error", "message": "x"})
    assert done_after_each_cut(ANTHROPIC, MESSAGES[0] + error, 5)[-1]
    assert done_after_each_cut(RESPONSES, RESPONSES_EVENTS[0] + error, 5)[-1]
    assert not done_after_each_cut(OPENAI, CHAT[0] + b'data: {"error": {}}\n\n', 5)[-1]


def test_the_paths_of_each_family() -> None:
    assert stream_kind("/v1/messages") is ANTHROPIC and stream_kind("/messages") is ANTHROPIC
    assert stream_kind("/v1/responses") is RESPONSES and stream_kind("/v1/responses/resp_1") is RESPONSES
    assert stream_kind("/v1/chat/completions") is OPENAI and stream_kind("/completions") is OPENAI


def test_a_broken_stream_ends_in_its_familys_way() -> None:
    chat = OPENAI.broken(CHAT[0], "node-b")
    assert chat.endswith(b"data: [DONE]\n\n") and b'"code": "peer_failed"' in chat
    [(name, data)] = parse_sse(ANTHROPIC.broken(b"".join(MESSAGES[:4]), "node-b"))
    assert name == "error" and data["error"]["type"] == "api_error" and "node-b" in data["error"]["message"]
    relayed = b"".join(RESPONSES_EVENTS[:3]) + b"event: response.output_text.delta\ndata: {\"ty"  # cut mid-event
    (error, failed) = parse_sse(RESPONSES.broken(relayed, "node-b"))
    assert error[0] == "error" and error[1]["code"] == "peer_failed" and error[1]["sequence_number"] == 3
    assert failed[0] == "response.failed" and failed[1]["sequence_number"] == 4
    assert failed[1]["response"]["id"] == "resp_1" and failed[1]["response"]["status"] == "failed"
