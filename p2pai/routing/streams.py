"""How each API family's event stream ends: what tells the relay that a stream is complete, and
what the entry node sends in its place when the serving node failed mid-stream.

- OpenAI chat and completions: `data: [DONE]` ends the stream; a broken one gets an error event
  (code peer_failed) then [DONE].
- Anthropic Messages: the `message_stop` event (or an `error` event) ends it; a broken one gets
  an `error` event (api_error), as Anthropic ends a stream that failed.
- OpenAI Responses: `response.completed`, `.incomplete`, `.failed` (or an `error` event) end it; a
  broken one gets an `error` event and `response.failed` with the response `response.created`
  announced, each with the next sequence number.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..event_stream import DONE


@dataclass(frozen=True)
class StreamKind:
    final: tuple[bytes, ...]
    """How the events that end a complete stream begin."""
    broken: Callable[[bytes, str], bytes]
    """The end of a stream whose node (named) failed, given the bytes relayed so far."""
    keeps: bool = False
    """``broken`` reads the relayed bytes (else it is given none)."""


def _failure(peer: str) -> str:
    return f"The node serving this answer ({peer}) failed mid-stream; the answer is incomplete."


def _openai_broken(_: bytes, peer: str) -> bytes:
    error = {"message": _failure(peer), "type": "server_error", "param": None, "code": "peer_failed"}
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n" + DONE


def _anthropic_broken(_: bytes, peer: str) -> bytes:
    return _event("error", {"type": "error", "error": {"type": "api_error", "message": _failure(peer)}})


def _responses_broken(relayed: bytes, peer: str) -> bytes:
    response: dict[str, Any] | None = None
    sequence = -1
    for event in relayed.split(b"\n\n")[:-1]:  # a trailing partial event is not counted
        data = _data(event)
        if data is None:
            continue
        sequence = max(sequence, data.get("sequence_number", sequence))
        if data.get("type") == "response.created" and isinstance(data.get("response"), dict):
            response = data["response"]
    out = _event("error", {"type": "error", "code": "peer_failed", "message": _failure(peer), "param": None,
                           "sequence_number": sequence + 1})
    if response is not None:
        response.update(status="failed", error={"code": "peer_failed", "message": _failure(peer)})
        out += _event("response.failed", {"type": "response.failed", "response": response,
                                          "sequence_number": sequence + 2})
    return out


def _data(event: bytes) -> dict[str, Any] | None:
    for line in event.split(b"\n"):
        if line.startswith(b"data: {"):
            try:
                data = json.loads(line[6:])
            except (ValueError, RecursionError):
                return None
            return data if isinstance(data, dict) else None
    return None


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(data).encode() + b"\n\n"


OPENAI = StreamKind((b"data: [DONE]\n",), _openai_broken)
ANTHROPIC = StreamKind((b"event: message_stop\n", b"event: error\n"), _anthropic_broken)
RESPONSES = StreamKind((b"event: response.completed\n", b"event: response.incomplete\n",
                        b"event: response.failed\n", b"event: error\n"), _responses_broken, keeps=True)


def stream_kind(path: str) -> StreamKind:
    if path.startswith(("/v1/messages", "/messages")):
        return ANTHROPIC
    if path.startswith(("/v1/responses", "/responses")):
        return RESPONSES
    return OPENAI
