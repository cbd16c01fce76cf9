"""What metrics and traces cost on the hot path (issue #17).

1. HTTP, A/B interleaved: the real node app (in-process, the tests' tiny llama.cpp model in its own
   process) with the `observe` middleware (LocalAI's api_call histogram and a trace per request that
   does work) against the same app without it, one round of each in turn, sequential keep-alive
   requests; median µs per request and the difference.
2. What the layers record, timed alone (timeit, median of rounds): the serving wrapper per streamed
   chunk and per generation, the counters of one served request, and the routing figures of one
   forwarded request.

    flock /tmp/p2pai-heavy.lock .venv/bin/python bench/metrics_cost.py --requests 400 --rounds 9
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import AsyncIterator, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import aiohttp
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bench_single_node import CpuMeter
from p2pai.aiohttp_internals import bound_port
from p2pai.api import app as app_module
from p2pai.api.app import create_app
from p2pai.api.observe import observer
from p2pai.api.state import NodeState
from p2pai.backends.base import GenerationChunk, Usage
from p2pai.metrics import FORWARDED_REQUESTS, MODEL_REQUESTS, PEER_LATENCY, model_label, peer_label
from p2pai.models.catalog import build_catalog
from p2pai.routing.router import Hop
from p2pai.serving.context import _measured
from p2pai.serving.limits import MAX_BODY_BYTES
from p2pai.serving.manager import ModelManager

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
CASES: dict[str, tuple[str, str, dict | None]] = {
    "GET /v1/models (timed)": ("GET", "/v1/models", None),
    "POST /v1/tokenize (timed, traced)": ("POST", "/v1/tokenize", {"model": "tiny", "content": "hello world"}),
    "POST /v1/chat/completions, 1 token (timed, traced)": ("POST", "/v1/chat/completions", CHAT),
}


def without_observe(state: NodeState) -> web.Application:
    """The node app without issue #17's middleware (same API routes, same other middlewares)."""
    bare = web.Application(middlewares=[app_module.openai_errors, app_module.no_peer_requests, app_module.api_keys],
                           client_max_size=MAX_BODY_BYTES)
    bare[app_module.STATE] = state
    for table in (app_module.routes, app_module.localai_routes, app_module.p2p_routes):
        bare.add_routes(table)
    return bare


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{bound_port(site)}"


async def round_of(session: aiohttp.ClientSession, url: str, method: str, path: str, body: dict | None,
                   requests: int) -> float:
    """Seconds per request, sequential."""
    started = time.perf_counter()
    for _ in range(requests):
        async with session.request(method, url + path, json=body) as response:
            await response.read()
            assert response.status == 200, response.status
    return (time.perf_counter() - started) / requests


async def http_ab(requests: int, rounds: int, meter: CpuMeter) -> None:
    from tiny_gguf import write_tiny_gguf

    with tempfile.TemporaryDirectory() as workdir:
        models = Path(workdir)
        write_tiny_gguf(models / "tiny.gguf", seed=1)
        (models / "tiny.yaml").write_text("name: tiny\nparameters:\n  model: tiny.gguf\n  temperature: 0\n"
                                          "context_size: 256\nparallel: 1\n")
        manager = ModelManager(build_catalog(models, models, []), threads=1)
        state = NodeState(manager, node_id="bench", version="bench", ready=True)
        runners = []
        try:
            urls = {}
            for name, app in (("with", create_app(state)), ("without", without_observe(state))):
                runner, urls[name] = await serve(app)
                runners.append(runner)
            async with aiohttp.ClientSession() as session:
                for method, path, body in CASES.values():  # warm up: load the model, fill the trace buffer
                    for url in urls.values():
                        await round_of(session, url, method, path, body, 300)
                meter.wait_quiet()
                for case, (method, path, body) in CASES.items():
                    times: dict[str, list[float]] = {"with": [], "without": []}
                    since = meter.mark()
                    for _ in range(rounds):
                        for name in ("without", "with"):
                            times[name].append(await round_of(session, urls[name], method, path, body, requests))
                    others = meter.others_cores(since)
                    bare, full = (statistics.median(times[n]) * 1e6 for n in ("without", "with"))
                    print(f"| {case} | {bare:.0f} µs | {full:.0f} µs | {full - bare:+.1f} µs | "
                          f"{full / bare:.3f} | {others:.2f} |", flush=True)
        finally:
            for runner in runners:
                await runner.cleanup()
            await manager.close()


def middleware_alone(rounds: int) -> None:
    """The observe middleware around a handler that answers at once, on a request with a client's usual
    headers: what it adds to every request, without the HTTP noise of part 1."""
    state = NodeState(ModelManager(build_catalog(Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp()), [])),
                      node_id="bench", version="bench", ready=True)
    app = create_app(state)
    headers = {"Host": "127.0.0.1:8080", "User-Agent": "OpenAI/Python 1.99.0", "Accept": "application/json",
               "Accept-Encoding": "gzip, deflate", "Content-Type": "application/json", "Content-Length": "83",
               "Authorization": "Bearer sk-bench", "X-Stainless-Lang": "python", "X-Stainless-Os": "Linux",
               "Connection": "keep-alive"}
    answer = b"x" * 355

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=answer, headers={"X-P2PAI-Served-By": "bench", "X-P2PAI-Model": "tiny",
                                                  "Content-Type": "application/json"})

    observe = observer(peer=False)
    loop = asyncio.new_event_loop()
    number = 20000

    async def calls(request: web.Request, wrapped: bool) -> None:
        for _ in range(number):
            if wrapped:
                await observe(request, handler)
            else:
                await handler(request)

    for method in ("GET", "POST"):
        request = make_mocked_request(method, "/v1/chat/completions", headers=headers, app=app)
        costs = {wrapped: min(timeit.repeat(lambda r=request, w=wrapped: loop.run_until_complete(calls(r, w)),
                                            number=1, repeat=rounds)) / number * 1e6 for wrapped in (False, True)}
        what = "timed and traced" if method == "POST" else "timed"
        print(f"| the observe middleware, {method} ({what}) | {costs[False]:.2f} µs | {costs[True]:.2f} µs | "
              f"{costs[True] - costs[False]:+.2f} µs per request |")
    loop.close()


def micro(rounds: int) -> None:
    chunk = GenerationChunk(text=" x")
    last = GenerationChunk(text="", finish_reason="length", usage=Usage(prompt_tokens=5, completion_tokens=64))

    async def chunks(n: int) -> AsyncIterator[GenerationChunk]:
        for _ in range(n - 1):
            yield chunk
        yield last

    async def consume(make: Callable[[], AsyncIterator[GenerationChunk]]) -> None:
        async for _ in make():
            pass

    loop = asyncio.new_event_loop()
    n = 64

    def per_chunk(make: Callable[[], AsyncIterator[GenerationChunk]]) -> float:
        runs = 200
        return min(timeit.repeat(lambda: loop.run_until_complete(consume(make)), number=runs, repeat=rounds)) \
            / runs / n * 1e6

    plain = per_chunk(lambda: chunks(n))
    measured = per_chunk(lambda: _measured(chunks(n), "tiny"))
    print(f"| a generation of {n} chunks through ServedModel.generate | {plain:.2f} µs/chunk | "
          f"{measured:.2f} µs/chunk | {measured - plain:+.2f} µs/chunk ({(measured - plain) * n:.0f} µs per "
          "generation, histograms and token counters included) |")
    loop.close()

    def served_request() -> None:  # what a served request records besides the wrapper (Serving.model, tokens)
        MODEL_REQUESTS.labels(model_label("tiny"), "chat").inc()

    def forwarded_request() -> None:  # the router's figures of one forward
        label = peer_label("12D3KooWPeer")
        FORWARDED_REQUESTS.labels(label).inc()
        PEER_LATENCY.labels(label).observe(0.0012)
        Hop("12D3KooWPeer", "b", "direct", 200, 1.2)

    for name, work in (("Serving.model's request counter", served_request),
                       ("the router's figures of one forwarded request", forwarded_request)):
        number = 20000
        cost = min(timeit.repeat(work, number=number, repeat=rounds)) / number * 1e6
        print(f"| {name} | | | {cost:+.2f} µs per request |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="requests per round")
    parser.add_argument("--rounds", type=int, default=9, help="rounds of each variant, interleaved")
    args = parser.parse_args()
    meter = CpuMeter([os.getpid()])
    print("| request | without observe | with | added | ratio | others' cores |")
    print("| --- | --- | --- | --- | --- | --- |")
    asyncio.run(http_ab(args.requests, args.rounds, meter))
    print()
    print("| recorded by | before | after | added |")
    print("| --- | --- | --- | --- |")
    middleware_alone(args.rounds)
    micro(args.rounds)


if __name__ == "__main__":
    main()
