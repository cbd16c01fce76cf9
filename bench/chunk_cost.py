"""CPU per streamed chunk: typed answers (pydantic models) against the dicts and json.dumps they replaced.

A stream sends one server-sent event per generated piece of text. Before the
protocol models, serving built a dict per chunk and the SSE writer ran
json.dumps on it; now serving builds a ChatCompletionChunk (or Completion) and
api/replies.py's sse_event serializes it. Three ways of producing the same
bytes, interleaved (one round of each in turn), median microseconds per chunk:

- dicts: the dict and json.dumps of before;
- dump_json: the models serialized with model_dump_json().encode() (str, then bytes again);
- sse_event: the models as sse_event sends them now (pydantic-core's bytes as they are).

    flock /tmp/p2pai-heavy.lock .venv/bin/python bench/chunk_cost.py --chunks 20000 --rounds 15
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import BaseModel

from bench_single_node import CpuMeter
from p2pai.api.replies import sse_event
from p2pai.protocol.openai import ChatChunkChoice, ChatCompletionChunk, ChatDelta, Completion, CompletionChoice

IDENT = "chatcmpl-0123456789abcdef0123456789abcdef"
CREATED = 1700000000
MODEL = "gemma-3-270m"
PIECES = [" once", " upon", " a", " time", ",", " in", " a", " small", " village", " é"]


def chat_dict(piece: str) -> dict[str, Any]:
    """serving/chat.py's chunk() before the models."""
    return {"id": IDENT, "object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}]}


def chat_model(piece: str) -> ChatCompletionChunk:
    """serving/chat.py's chunk() now."""
    return ChatCompletionChunk(id=IDENT, created=CREATED, model=MODEL, choices=[
        ChatChunkChoice(index=0, delta=ChatDelta(content=piece), logprobs=None, finish_reason=None)])


def completion_dict(piece: str) -> dict[str, Any]:
    """serving/completions.py's chunk() before the models."""
    return {"id": IDENT, "object": "text_completion", "created": CREATED, "model": MODEL,
            "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]}


def completion_model(piece: str) -> Completion:
    """serving/completions.py's chunk() now."""
    return Completion(id=IDENT, created=CREATED, model=MODEL, choices=[
        CompletionChoice(index=0, text=piece, logprobs=None, finish_reason=None)])


def by_dicts(build: Callable[[str], dict[str, Any]]) -> Callable[[list[str]], list[bytes]]:
    """api/sse.py's _event before the models."""
    return lambda pieces: [b"data: " + json.dumps(build(piece), ensure_ascii=False, separators=(",", ":")).encode()
                           + b"\n\n" for piece in pieces]


def by_dump_json(build: Callable[[str], BaseModel]) -> Callable[[list[str]], list[bytes]]:
    return lambda pieces: [b"data: " + build(piece).model_dump_json().encode() + b"\n\n" for piece in pieces]


def by_sse_event(build: Callable[[str], BaseModel]) -> Callable[[list[str]], list[bytes]]:
    return lambda pieces: [sse_event(build(piece)) for piece in pieces]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=20000, help="chunks per round (default 20000)")
    parser.add_argument("--rounds", type=int, default=15, help="rounds of each way (default 15)")
    args = parser.parse_args()
    pieces = (PIECES * (args.chunks // len(PIECES) + 1))[:args.chunks]
    meter = CpuMeter([os.getpid()])
    kinds = {"chat": (chat_dict, chat_model), "completion": (completion_dict, completion_model)}
    for kind, (as_dict, as_model) in kinds.items():
        ways = {"dicts": by_dicts(as_dict), "dump_json": by_dump_json(as_model), "sse_event": by_sse_event(as_model)}
        sent = [way(pieces[:50]) for way in ways.values()]
        assert all(bytes_ == sent[0] for bytes_ in sent), f"{kind}: every way must send the same bytes"
        timings: dict[str, list[float]] = {name: [] for name in ways}
        meter.wait_quiet()
        since = meter.mark()
        for _ in range(args.rounds):
            for name, way in ways.items():
                started = time.perf_counter()
                way(pieces)
                timings[name].append((time.perf_counter() - started) / args.chunks * 1e6)
        print(f"== {kind} chunk (others used {meter.others_cores(since):.2f} core)")
        baseline = statistics.median(timings["dicts"])
        for name, values in timings.items():
            median = statistics.median(values)
            print(f"{name:10} {median:6.2f} us per chunk (min {min(values):.2f}, max {max(values):.2f});"
                  f" {median / baseline:.2f} x dicts")


if __name__ == "__main__":
    main()
