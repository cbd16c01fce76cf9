"""Anthropic's /v1/messages and OpenAI's /v1/responses against /v1/chat/completions, for the same generation.

One `p2pai start --preload` node serves the model (default: the built-in gemma-3-270m, Q4_K_M). Each round
streams the same conversation (one user message, greedy, `--max-tokens` tokens) once through each
family, in a rotating order, each after the machine is quiet; `/v1/responses` runs with its defaults
(`store` true: every response is written to the node's SQLite store). Per family: time to first
token (request sent to the first event carrying text) and decode speed (tokens after the first over
the time from the first to the last text event). Ratios are chat's TTFT over the family's (higher
is better) and the family's tok/s over chat's; the target is >= 0.98 for both (issue #18).

Run `python bench/bench_families.py --help` for the options; see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_single_node import (
    HOST,
    CpuMeter,
    ServerProcess,
    free_port,
    machine,
    markdown_table,
)

PROMPT = "Once upon a time, in a small village by the sea,"
TARGET = 0.98
BUILT_IN = "gemma-3-270m"
"""The default model, with its config (chat_format gemma: the GGUF has no chat template)."""
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "families.json"


@dataclass
class Run:
    family: str
    ttft_s: float
    decode_s: float
    tokens: int
    text: str
    others_cores: float

    @property
    def tps(self) -> float:
        return (self.tokens - 1) / self.decode_s if self.decode_s > 0 else 0.0


def chat_body(max_tokens: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}


def messages_body(max_tokens: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens, "temperature": 0,
            "stream": True}


def responses_body(max_tokens: int) -> dict[str, Any]:
    return {"input": PROMPT, "max_output_tokens": max_tokens, "temperature": 0, "stream": True}


def chat_event(data: dict[str, Any]) -> tuple[str, int | None]:
    text = "".join((c.get("delta") or {}).get("content") or "" for c in data.get("choices") or ())
    return text, (data.get("usage") or {}).get("completion_tokens")


def messages_event(data: dict[str, Any]) -> tuple[str, int | None]:
    if data["type"] == "content_block_delta":
        return data["delta"].get("text", ""), None
    return "", data["usage"]["output_tokens"] if data["type"] == "message_delta" else None


def responses_event(data: dict[str, Any]) -> tuple[str, int | None]:
    if data["type"] == "response.output_text.delta":
        return data["delta"], None
    usage = (data.get("response") or {}).get("usage") if data["type"].startswith("response.") else None
    return "", usage["output_tokens"] if usage else None


FAMILIES: dict[str, tuple[str, Callable[[int], dict[str, Any]], Callable[[dict[str, Any]], tuple[str, int | None]]]]
FAMILIES = {
    "chat": ("/v1/chat/completions", chat_body, chat_event),
    "messages": ("/v1/messages", messages_body, messages_event),
    "responses": ("/v1/responses", responses_body, responses_event),
}


async def stream(session: aiohttp.ClientSession, url: str, family: str, model: str, max_tokens: int,
                 meter: CpuMeter) -> Run:
    path, body, read = FAMILIES[family]
    since = meter.mark()
    start = time.perf_counter()
    first = last = None
    parts: list[str] = []
    tokens = None
    seen: list[bytes] = []
    async with session.post(url + path, json={"model": model, **body(max_tokens)}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{family} answered {resp.status}: {(await resp.text())[:500]}")
        async for raw in resp.content:
            line = raw.strip()
            seen.append(line)
            if not line.startswith(b"data: {"):
                continue
            text, count = read(json.loads(line[6:]))
            if text:
                now = time.perf_counter()
                first = first or now
                last = now
                parts.append(text)
            tokens = count if count is not None else tokens
    if first is None or last is None or tokens is None:
        raise RuntimeError(f"{family}: no text or no token count in the stream: {b''.join(seen)[:800]!r}")
    return Run(family, first - start, last - first, tokens, "".join(parts), meter.others_cores(since))


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    port = free_port()
    argv = [str(Path(sys.executable).with_name("p2pai")), "start", "--listen", f"{HOST}:{port}",
            "--data-dir", str(workdir / "data"), *(["--model", args.model] if args.model else []),
            "--threads", str(args.threads), "--preload", "--no-mdns", "--p2p-listen", f"/ip4/{HOST}/tcp/{free_port()}",
            "--peer-listen", f"{HOST}:0"]
    server = ServerProcess("p2pai", argv, port, "/readyz", workdir / "node.log")
    served = Path(args.model).stem if args.model else BUILT_IN
    runs: list[Run] = []
    try:
        server.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            await server.wait_ready(session)
            meter = CpuMeter([os.getpid()])
            for family in FAMILIES:  # warm-up, not counted
                await stream(session, server.url, family, served, args.max_tokens, meter)
            order = list(FAMILIES)
            for round_ in range(args.repeat):
                for family in order[round_ % 3:] + order[: round_ % 3]:
                    await asyncio.to_thread(meter.wait_quiet)
                    runs.append(await stream(session, server.url, family, served, args.max_tokens, meter))
                print(f"  round {round_ + 1}/{args.repeat}", file=sys.stderr, flush=True)
    finally:
        server.stop()
    return {"model": served, "runs": runs}


def summarise(runs: list[Run]) -> dict[str, dict[str, float]]:
    out = {}
    for family in FAMILIES:
        mine = [r for r in runs if r.family == family]
        out[family] = {"ttft_ms": statistics.median(r.ttft_s for r in mine) * 1000,
                       "tps": statistics.median(r.tps for r in mine),
                       "tokens": statistics.median(r.tokens for r in mine),
                       "others_cores": statistics.median(r.others_cores for r in mine)}
    chat = out["chat"]
    for family in ("messages", "responses"):
        out[family]["ttft_ratio"] = chat["ttft_ms"] / out[family]["ttft_ms"]
        out[family]["tps_ratio"] = out[family]["tps"] / chat["tps"]
    return out


def table(summary: dict[str, dict[str, float]]) -> str:
    def verdict(value: float) -> str:
        return f"{value:.3f} ({'met' if value >= TARGET else 'missed'})"

    lines = [["family", "TTFT ms", "tok/s", "TTFT ratio (chat / family)", "tok/s ratio (family / chat)"]]
    for family, row in summary.items():
        ratios = [verdict(row["ttft_ratio"]), verdict(row["tps_ratio"])] if family != "chat" else ["1", "1"]
        lines.append([family, f"{row['ttft_ms']:.1f}", f"{row['tps']:.1f}", *ratios])
    return markdown_table(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="GGUF file with a chat template (default: the built-in gemma-3-270m)")
    parser.add_argument("--repeat", type=int, default=15, help="rounds (one stream per family each); medians")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="p2pai-bench-families-") as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    runs: list[Run] = result["runs"]
    texts = {r.family: r.text for r in runs}
    same = len(set(texts.values())) == 1
    summary = summarise(runs)
    print(table(summary))
    print(f"same text from every family: {same}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(), "machine": machine(), "args": vars(args) | {
            "output": str(args.output)}, "model": result["model"], "same_text": same, "summary": summary,
        "runs": [asdict(r) | {"tps": r.tps} for r in runs]}, indent=2))
    return 0 if same and all(summary[f][k] >= TARGET for f in ("messages", "responses")
                             for k in ("ttft_ratio", "tps_ratio")) else 1


if __name__ == "__main__":
    sys.exit(main())
