"""Continue a streamed answer on another node when the node serving it dies.

The entry node keeps the bytes it relayed; if the stream breaks, it asks
another node for the rest (the prompt plus the text already sent, as a
completion prompt or an assistant message to continue) and relays that
answer's events rewritten as the same stream (same id, no second role delta,
usage summed), so the client sees one uninterrupted answer.

Only plain text answers are continued: one choice, no logprobs, tools,
grammar or response format (their state cannot be carried over).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
COMPLETION_PATHS = ("/v1/completions", "/completions")
CONTINUABLE_PATHS = CHAT_PATHS + COMPLETION_PATHS
"""Where a broken stream may be continued on another node (continuable() says whether this one may)."""
_BLOCKING_FIELDS = ("logprobs", "top_logprobs", "tools", "response_format", "grammar", "suffix", "echo")


@dataclass(frozen=True)
class Progress:
    """What the client has received of the broken stream."""

    id: str | None
    created: int | None
    text: str
    tokens: int
    finished: bool


def continuable(path: str, body: bytes) -> dict[str, Any] | None:
    """The request as JSON if its stream could be continued elsewhere."""
    if path not in CONTINUABLE_PATHS:
        return None
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(request, dict) or not request.get("stream") or request.get("n", 1) != 1:
        return None
    if any(request.get(name) for name in _BLOCKING_FIELDS):
        return None
    if path in COMPLETION_PATHS and not isinstance(request.get("prompt"), str):
        return None
    return request


def progress(relayed: bytes) -> Progress:
    """Parse the SSE events relayed so far (a trailing partial event is ignored)."""
    first_id = created = None
    pieces: list[str] = []
    tokens = 0
    finished = False
    for event in relayed.split(b"\n\n")[:-1]:
        if not event.startswith(b"data: {"):
            continue
        data = json.loads(event[6:])
        first_id = first_id or data.get("id")
        created = created or data.get("created")
        for choice in data.get("choices") or ():
            piece = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
            if piece:
                pieces.append(piece)
                tokens += 1
            finished = finished or choice.get("finish_reason") is not None
    return Progress(first_id, created, "".join(pieces), tokens, finished)


def continuation_request(path: str, request: dict[str, Any], done: Progress) -> bytes | None:
    """The request for the rest of the answer, or None if nothing is left to generate."""
    follow = dict(request)
    limit_field = "max_completion_tokens" if request.get("max_completion_tokens") else "max_tokens"
    limit = request.get(limit_field)
    if path in COMPLETION_PATHS:
        limit = 16 if limit is None else limit  # OpenAI's default for completions
        follow["prompt"] = request["prompt"] + done.text
    else:
        follow["messages"] = [*request["messages"], {"role": "assistant", "content": done.text}]
        follow["continue_final_message"] = True
    if limit is not None:
        if limit - done.tokens <= 0:
            return None
        follow[limit_field] = limit - done.tokens
    return json.dumps(follow).encode()


class Rewriter:
    """Makes the continuation's events read as the rest of the original stream."""

    def __init__(self, done: Progress, chat: bool) -> None:
        self._done = done
        self._chat = chat
        self._buffer = b""

    def feed(self, chunk: bytes) -> bytes:
        self._buffer += chunk
        *events, self._buffer = self._buffer.split(b"\n\n")
        return b"".join(self._rewrite(event) for event in events)

    def _rewrite(self, event: bytes) -> bytes:
        if not event.startswith(b"data: {"):
            return event + b"\n\n"
        data = json.loads(event[6:])
        if "error" in data:
            return event + b"\n\n"
        if self._done.id:
            data["id"] = self._done.id
        if self._done.created:
            data["created"] = self._done.created
        choices = data.get("choices") or []
        if self._chat and choices and choices[0].get("delta", {}).get("role") and not choices[0]["delta"].get(
            "content"
        ) and choices[0].get("finish_reason") is None:
            return b""  # the role was announced by the first node
        usage = data.get("usage")
        if usage:
            usage["completion_tokens"] += self._done.tokens
            usage["prompt_tokens"] = max(0, usage["prompt_tokens"] - self._done.tokens)
        return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
