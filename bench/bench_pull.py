"""Pull benchmark: a model pulled from peers against a plain single-stream HTTP download of the
same file, in the same run.

Contenders, interleaved round by round (real processes on loopback only):

| contender | what runs |
| --- | --- |
| http | `curl -o FILE` from a plain HTTP server of the file (aiohttp, `--http-server` mode): one stream, |
| | no TLS, no verification, no fsync |
| peer1 | a `p2pai start` node pulls the file (`POST /models/apply {name}`) from one peer |
| peer2 | the same from two peers at once |

A pull goes over the data plane as nodes use it: signed requests over TLS, 4 MiB chunks (two in
flight per source), each chunk's SHA-256 checked, written with pwrite, fdatasync every second,
the whole file's SHA-256 checked at the end before it is renamed into place. Time runs from
the apply request to the job's end.

Two modes. `unlimited`: every server sends as fast as it can; on one 2-core machine all
contenders then share the same cores, so what it shows is CPU per GB. `limited`: every server
sends at most `--rate` bytes/s (the HTTP server with the same token bucket as the nodes'
`--serve-rate`), as peers behind a LAN link would: this shows what several sources give.

The file is random bytes (a node reads a model's file only when it loads it), by default in a
tmpfs (`--workdir`), so that what is measured is the transfer, not the disk's write-back
speed; `--workdir` on a disk measures that too. Run `python bench/bench_pull.py --help`;
results in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

from bench_single_node import HOST, CpuMeter, free_port, machine, tree_ticks  # noqa: E402
from p2pai.token import new_token  # noqa: E402

MODEL = "bench"
TUNNEL = "tunnel1"
"""With --tunnel: one source whose advertised peer endpoint has no listener, so the pull goes through
the libp2p tunnel (the fallback for peers that cannot be reached directly; no target)."""
TARGETS = {"peer1": 0.9, "peer2": 1.5}
"""Minimum throughput against the single HTTP stream (issue #16)."""
READY_TIMEOUT_S = 60.0
SWARM_TIMEOUT_S = 30.0
PULL_TIMEOUT_S = 600.0
POLL_S = 0.1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DEFAULT_OUTPUT = BENCH / "results" / "pull.json"
DEFAULT_WORKDIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


# The baseline's server (run as `bench_pull.py --http-server FILE PORT RATE`).


def http_server(path: str, port: int, rate: float) -> None:
    from aiohttp import web

    from p2pai.models.fetch import RateLimit

    limit = RateLimit(rate or None)
    size = os.path.getsize(path)

    async def whole(request: web.Request) -> web.StreamResponse:
        if not rate:
            return web.FileResponse(path)  # sendfile: the fastest plain server
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        fd = os.open(path, os.O_RDONLY)
        try:
            for offset in range(0, size, 1 << 20):
                block = os.pread(fd, 1 << 20, offset)  # from the page cache: the file was read once before
                await limit.take(len(block))
                await response.write(block)
        finally:
            os.close(fd)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/file", whole)
    web.run_app(app, host=HOST, port=port, print=None)


# Processes.


class Process:
    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def cpu_s(self) -> float:
        return tree_ticks([self.proc.pid]) / CLOCK_TICKS


class Node(Process):
    def __init__(self, name: str, workdir: Path, token: str, *extra: str) -> None:
        self.port, self.p2p_port = free_port(), free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.data_dir = workdir / name
        argv = [sys.executable, "-m", "p2pai", "start", "--token", token, "--name", name,
                "--listen", f"{HOST}:{self.port}", "--peer-listen", f"{HOST}:0",
                "--p2p-listen", f"/ip4/{HOST}/tcp/{self.p2p_port}", "--no-mdns", "--data-dir", str(self.data_dir),
                "--log-level", "warning", *extra]
        super().__init__(name, argv, workdir / f"{name}.log")
        self.peer_id = ""

    async def ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-2000:]}")
            try:
                async with session.get(self.url + "/readyz") as reply:
                    if reply.status == 200:
                        async with session.get(self.url + "/api/p2p") as swarm:
                            self.peer_id = (await swarm.json())["self"]["id"]
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {READY_TIMEOUT_S} s")

    @property
    def bootstrap(self) -> str:
        return f"/ip4/{HOST}/tcp/{self.p2p_port}/p2p/{self.peer_id}"


class Swarm:
    """Source nodes serving the file, and a node that pulls it."""

    def __init__(self, name: str, workdir: Path, model: Path, sources: int, rate: str, *extra: str) -> None:
        self.name = name
        self.workdir = workdir
        self.token = new_token()
        self.serve = ["--model", str(model), "--serve-rate", rate, *extra]
        self.count = sources
        self.sources: list[Node] = []
        self.puller: Node | None = None

    async def start(self, session: aiohttp.ClientSession) -> None:
        first = Node(f"{self.name}-source0", self.workdir, self.token, *self.serve)
        self.sources.append(first)
        await first.ready(session)
        for number in range(1, self.count):
            self.sources.append(Node(f"{self.name}-source{number}", self.workdir, self.token, *self.serve,
                                     "--bootstrap", first.bootstrap))
            await self.sources[-1].ready(session)
        self.puller = Node(f"{self.name}-puller", self.workdir, self.token, "--no-default-model",
                           "--bootstrap", first.bootstrap)
        await self.puller.ready(session)
        deadline = time.monotonic() + SWARM_TIMEOUT_S
        wanted = {s.peer_id for s in self.sources}
        while time.monotonic() < deadline:
            async with session.get(self.puller.url + "/v1/models") as reply:
                cards = (await reply.json())["data"]
            if any(card["id"] == MODEL and wanted <= set(card["on_disk"]) for card in cards):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name}: the puller does not see the file announced by every source")

    def processes(self) -> list[Process]:
        return [*self.sources, *([self.puller] if self.puller else [])]

    def stop(self) -> None:
        for process in self.processes():
            process.stop()


# Measurements.


async def pull(session: aiohttp.ClientSession, swarm: Swarm, size: int) -> tuple[float, dict[str, float]]:
    """Seconds from the apply request to the end of the job, and the CPU seconds each process had used
    by then; the model is deleted again after."""
    puller = swarm.puller
    assert puller is not None
    started = time.perf_counter()
    async with session.post(puller.url + "/models/apply", json={"name": MODEL}) as reply:
        job = (await reply.json())["uuid"]
    deadline = time.monotonic() + PULL_TIMEOUT_S
    while time.monotonic() < deadline:
        async with session.get(f"{puller.url}/models/jobs/{job}") as reply:
            status = await reply.json()
        if status["processed"]:
            break
        await asyncio.sleep(POLL_S)
    elapsed = time.perf_counter() - started
    cpu = {p.name: p.cpu_s() for p in swarm.processes()}
    if status.get("error") or status.get("total_bytes") != size:
        raise RuntimeError(f"{swarm.name}: the pull failed: {status}")
    async with session.post(f"{puller.url}/models/delete/{MODEL}") as reply:
        assert reply.status == 200, await reply.text()
    await asyncio.sleep(1.0)  # the puller looks at its model files again (not part of the pull)
    return elapsed, cpu


def download(url: str, target: Path) -> tuple[float, float]:
    """curl's time and CPU seconds for one plain download."""
    started = time.perf_counter()
    proc = subprocess.Popen(["curl", "--silent", "--fail", "--noproxy", "*", "-o", str(target), url])
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"curl failed with {proc.returncode}")
    target.unlink()
    return elapsed, usage.ru_utime + usage.ru_stime


async def measure_mode(session: aiohttp.ClientSession, mode: str, rate: float, args: argparse.Namespace,
                       workdir: Path, model: Path, size: int) -> list[dict[str, Any]]:
    rate_flag = str(int(rate)) if rate else "0"
    server_port = free_port()
    server = Process("http-server", [sys.executable, __file__, "--http-server", str(model), str(server_port),
                                     str(rate)], workdir / f"{mode}-http-server.log")
    swarms = {"peer1": Swarm(f"{mode}-one", workdir, model, 1, rate_flag),
              "peer2": Swarm(f"{mode}-two", workdir, model, 2, rate_flag)}
    if args.tunnel:
        closed = f"{HOST}:{free_port()}"  # nobody listens there
        swarms[TUNNEL] = Swarm(f"{mode}-tunnel", workdir, model, 1, rate_flag, "--peer-advertise", closed)
    try:
        for swarm in swarms.values():
            await swarm.start(session)
        await asyncio.sleep(1.0)  # the server too
        url = f"http://{HOST}:{server_port}/file"
        download(url, workdir / "warm-up")  # page cache, and the server's first request
        blocks = []
        pids = [server.proc.pid] + [p.proc.pid for s in swarms.values() for p in s.processes()]
        meter = CpuMeter(pids)
        for round_ in range(args.rounds + 1):  # round 0 warms every contender up
            for contender in ["http", *swarms]:
                meter.wait_quiet()
                since = meter.mark()
                if contender == "http":
                    cpu_before = server.cpu_s()
                    elapsed, client_cpu = download(url, workdir / "download")
                    cpu = {"client": client_cpu, "sources": server.cpu_s() - cpu_before}
                else:
                    swarm = swarms[contender]
                    assert swarm.puller is not None
                    before = {p.name: p.cpu_s() for p in swarm.processes()}
                    elapsed, after = await pull(session, swarm, size)
                    cpu = {"client": after[swarm.puller.name] - before[swarm.puller.name],
                           "sources": sum(after[s.name] - before[s.name] for s in swarm.sources)}
                block = {"mode": mode, "round": round_, "contender": contender, "seconds": elapsed,
                         "mb_per_s": size / elapsed / 1e6, "client_cpu_s_per_gb": cpu["client"] / size * 1e9,
                         "sources_cpu_s_per_gb": cpu["sources"] / size * 1e9, "others_cores": meter.others_cores(since)}
                print(f"  {mode} round {round_} {contender}: {block['mb_per_s']:.0f} MB/s, client "
                      f"{block['client_cpu_s_per_gb']:.2f} CPU s/GB, sources {block['sources_cpu_s_per_gb']:.2f}",
                      flush=True)
                if round_:
                    blocks.append(block)
        return blocks
    finally:
        server.stop()
        for swarm in swarms.values():
            swarm.stop()


def summarise(blocks: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    summary: dict[str, Any] = {}
    lines = ["| mode | contender | MB/s | x http | target | client CPU s/GB | sources CPU s/GB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    contenders = list(dict.fromkeys(b["contender"] for b in blocks))
    for mode in dict.fromkeys(b["mode"] for b in blocks):
        medians = {}
        for contender in contenders:
            mine = [b for b in blocks if b["mode"] == mode and b["contender"] == contender]
            medians[contender] = {key: statistics.median(b[key] for b in mine)
                                  for key in ("mb_per_s", "client_cpu_s_per_gb", "sources_cpu_s_per_gb")}
            # The ratio per round (A/B interleaved), then its median.
            ratios = [b["mb_per_s"] / h["mb_per_s"] for b, h in zip(
                mine, [b for b in blocks if b["mode"] == mode and b["contender"] == "http"], strict=True)]
            medians[contender]["ratio"] = statistics.median(ratios)
        summary[mode] = medians
        for contender in contenders:
            row = medians[contender]
            target = TARGETS.get(contender)
            verdict = "" if target is None else f"≥ {target} {'✓' if row['ratio'] >= target else '✗'}"
            lines.append(f"| {mode} | {contender} | {row['mb_per_s']:.0f} | {row['ratio']:.2f} | {verdict} | "
                         f"{row['client_cpu_s_per_gb']:.2f} | {row['sources_cpu_s_per_gb']:.2f} |")
    summary["others_cores_max"] = max(b["others_cores"] for b in blocks)
    return summary, "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=256, help="size of the pulled file in MiB (default 256)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per mode after a warm-up (default 3)")
    parser.add_argument("--rate", default="40M", help="bytes/s per server in the limited mode (default 40M)")
    parser.add_argument("--modes", default="unlimited,limited")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help=f"where the file and the nodes' data dirs go (default {DEFAULT_WORKDIR})")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--tunnel", action="store_true", help=f"also pull through the libp2p tunnel ({TUNNEL})")
    parser.add_argument("--http-server", nargs=3, metavar=("FILE", "PORT", "RATE"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.http_server:
        http_server(args.http_server[0], int(args.http_server[1]), float(args.http_server[2]))
        return 0
    from p2pai.settings import byte_rate

    workdir = Path(tempfile.mkdtemp(prefix="p2pai-bench-pull-", dir=args.workdir))
    try:
        model = workdir / f"{MODEL}.gguf"
        with model.open("wb") as out:
            for _ in range(args.size_mb):
                out.write(os.urandom(1 << 20))
        print(f"file: {args.size_mb} MiB, sha256 {hashlib.sha256(model.read_bytes()).hexdigest()[:16]}…, "
              f"in {args.workdir}", flush=True)
        blocks: list[dict[str, Any]] = []

        async def run() -> None:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PULL_TIMEOUT_S)) as session:
                for mode in args.modes.split(","):
                    rate = byte_rate(args.rate) if mode == "limited" else None
                    blocks.extend(await measure_mode(session, mode, rate or 0.0, args, workdir, model,
                                                     args.size_mb << 20))

        asyncio.run(run())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary, table = summarise(blocks)
    print()
    print(table)
    print(f"\nmost cores used by other processes during a measurement: {summary['others_cores_max']:.2f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"date": datetime.now(timezone.utc).isoformat(), "machine": machine(),
                                       "args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                                       "blocks": blocks}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
