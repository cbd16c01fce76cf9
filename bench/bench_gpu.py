"""GPU benchmark: p2pai's decode speed on a GPU against llama.cpp's `llama-server -ngl 99`, same GGUF.

It prints the devices llama.cpp detects here (through the installed llama-cpp-python, as a
node does) and, when there is a GPU, times single-stream decode of:

1. p2pai: `p2pai start --preload` with no `gpu_layers`, so the automatic placement decides
   what goes on the GPU (the node's log shows its explanation);
2. llama-server: llama.cpp's C++ server with every layer offloaded (`-ngl 99`), a GPU build
   given with `--llama-server` or found on PATH.

Rounds alternate the two (A/B, one server running at a time so both have the whole GPU);
medians are compared with the target p2pai/llama-server >= 0.95. Without a GPU it says so
and exits with status 2: nothing is measured. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_single_node import HOST, REQUEST_TIMEOUT_S, CpuMeter, ServerProcess, default_model, free_port, http_stream
from p2pai.backends.llama.devices import Device, detect, gpus

TARGET = 0.95
NO_GPU = 2
"""Exit status when there is no GPU to measure."""
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "gpu.json"


def describe(device: Device) -> str:
    gib = 1 << 30
    return (f"{device.name} [{device.type}, {device.backend}] {device.description}: "
            f"{device.free / gib:.1f} GiB free of {device.total / gib:.1f} GiB")


def p2pai_server(model: str, args: argparse.Namespace, workdir: Path) -> ServerProcess:
    port = free_port()
    argv = [str(Path(sys.executable).with_name("p2pai")), "start", "--listen", f"{HOST}:{port}",
            "--data-dir", str(workdir / "p2pai-data"), "--model", model, "--threads", str(args.threads),
            "--context-size", str(args.ctx), "--parallel", "1", "--preload", "--no-default-model"]
    return ServerProcess("p2pai", argv, port, "/readyz", workdir / "p2pai.log")


def llama_server(model: str, args: argparse.Namespace, workdir: Path, binary: str) -> ServerProcess:
    port = free_port()
    argv = [binary, "--model", model, "-ngl", "99", "--ctx-size", str(args.ctx), "--parallel", "1",
            "--threads", str(args.threads), "--host", HOST, "--port", str(port)]
    return ServerProcess("llama-server", argv, port, "/health", workdir / "llama_server.log")


async def decode_rates(server: ServerProcess, args: argparse.Namespace) -> list[float]:
    """Start the server, warm it up, time `repeat` single streams; always stop it."""
    try:
        server.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as session:
            await server.wait_ready(session)
            meter = CpuMeter([os.getpid()])
            await http_stream(session, server.url, args.max_tokens, meter)  # warm-up
            return [(await http_stream(session, server.url, args.max_tokens, meter)).decode_tps
                    for _ in range(args.repeat)]
    finally:
        server.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="GGUF file (default: the built-in gemma-3-270m Q4_K_M; a 7-8B model "
                                        "shows the GPU's bandwidth better)")
    parser.add_argument("--llama-server", default=shutil.which("llama-server"),
                        help="a GPU build of llama.cpp's llama-server (default: llama-server on PATH)")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (each starts both servers once)")
    parser.add_argument("--repeat", type=int, default=3, help="timed streams per server per round")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    devices = asyncio.run(detect())
    print("devices llama.cpp detects here:")
    for device in devices or []:
        print(f"  {describe(device)}")
    if not devices:
        print("  none (llama-cpp-python missing or broken?)")
    if not gpus(devices):
        print("NO GPU FOUND: llama.cpp sees no GPU on this machine (or this llama-cpp-python was built for the CPU; "
              "scripts/install.sh builds for CUDA, ROCm, Metal or Vulkan when it finds the toolchain). "
              "Nothing measured.")
        return NO_GPU
    if not args.llama_server or not Path(args.llama_server).is_file():
        print("no llama-server binary: give a GPU build with --llama-server (or put it on PATH)")
        return 1
    rates: dict[str, list[float]] = {"p2pai": [], "llama-server": []}
    with tempfile.TemporaryDirectory(prefix="p2pai-bench-gpu-") as tmp:
        workdir = Path(tmp)
        model = args.model or default_model(workdir)
        for round_ in range(args.rounds):
            for server in (p2pai_server(model, args, workdir), llama_server(model, args, workdir, args.llama_server)):
                measured = asyncio.run(decode_rates(server, args))
                rates[server.name] += measured
                print(f"round {round_ + 1}: {server.name} {', '.join(f'{r:.1f}' for r in measured)} tok/s", flush=True)
        placement = [line for line in (workdir / "p2pai.log").read_text(errors="replace").splitlines()
                     if "placement" in line]
    medians = {name: statistics.median(values) for name, values in rates.items()}
    ratio = medians["p2pai"] / medians["llama-server"]
    print(f"decode tok/s (median): p2pai {medians['p2pai']:.1f}, llama-server -ngl 99 {medians['llama-server']:.1f}; "
          f"ratio {ratio:.3f} (target >= {TARGET}: {'met' if ratio >= TARGET else 'MISSED'})")
    for line in placement:
        print(f"p2pai {line.strip()}")
    report: dict[str, Any] = {
        "devices": [device.model_dump() for device in devices], "model": args.model or "gemma-3-270m (built-in)",
        "llama_server": args.llama_server, "rates": rates, "medians": medians, "ratio": ratio, "target": TARGET,
        "placement": placement, "args": {k: str(v) for k, v in vars(args).items()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
