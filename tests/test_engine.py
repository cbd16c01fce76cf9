"""A model in its own process, on a tiny real GGUF: correctness against llama-cpp-python itself,
and containment: what kills the model's process fails that model's requests, not the node."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from host_harness import InProcessModel
from p2pai.backends.base import (
    GenerationRequest,
    InvalidRequestError,
    ModelCrashedError,
    QueueFullError,
    SamplingParams,
)
from p2pai.backends.llama import LlamaSettings
from p2pai.backends.process import ChildSpec, ModelProcess
from p2pai.serving.context import collect

GREEDY = SamplingParams(temperature=0.0)


def _settings(tiny_path: Path, **kwargs) -> LlamaSettings:
    return LlamaSettings(path=str(tiny_path), context_size=512, threads=2, embeddings=True, max_queue=4, **kwargs)


@pytest.fixture
async def engine(tiny_path: Path):
    failed: list[ModelProcess] = []
    engine = await ModelProcess.start(ChildSpec("tiny", _settings(tiny_path)), failed.append)
    engine.failed = failed  # type: ignore[attr-defined]  # what the manager would have been told
    yield engine
    await engine.close()


async def test_greedy_output_matches_llama_cpp_python(tiny_path: Path) -> None:
    import llama_cpp

    prompt = "the people of the world"
    # Flash attention off, as `Llama` has it: then the logits, and so greedy text, are the same.
    engine = await ModelProcess.start(ChildSpec("tiny", _settings(tiny_path, flash_attention="off")), print)
    try:
        result = await collect(engine.generate(GenerationRequest(prompt, GREEDY, max_tokens=24)))
    finally:
        await engine.close()

    def reference() -> dict:
        llm = llama_cpp.Llama(str(tiny_path), n_ctx=512, n_threads=2, verbose=False)
        out = llm.create_completion(prompt, max_tokens=24, temperature=0.0, repeat_penalty=1.0)
        llm.close()
        return out

    expected = await asyncio.to_thread(reference)
    # llama-cpp-python drops invalid UTF-8 (the random model emits stray bytes); we mark it with U+FFFD.
    assert result.text.replace("\ufffd", "") == expected["choices"][0]["text"]
    assert result.usage.completion_tokens == expected["usage"]["completion_tokens"] == 24
    assert result.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    assert result.finish_reason == "length"


async def test_stream_pieces_add_up_to_the_whole_answer(engine: ModelProcess) -> None:
    request = GenerationRequest("hello world", GREEDY, max_tokens=20)
    whole = await collect(engine.generate(request))
    pieces = [chunk async for chunk in engine.generate(request)]
    assert len(pieces) > 5
    assert "".join(p.text for p in pieces) == whole.text
    assert pieces[-1].finish_reason == "length" and pieces[-1].usage is not None


async def test_stop_string_ends_generation_and_is_not_returned(engine: ModelProcess) -> None:
    full = await collect(engine.generate(GenerationRequest("hello world", GREEDY, max_tokens=30)))
    stop = full.text[10:13]
    assert stop.strip(), "the tiny model's answer should have text to stop on"
    result = await collect(engine.generate(GenerationRequest("hello world", GREEDY, max_tokens=30, stop=(stop,))))
    assert result.finish_reason == "stop"
    assert result.text == full.text[: full.text.index(stop)]
    assert result.usage.completion_tokens < 30


async def test_same_seed_same_sample_and_different_seed_differs(engine: ModelProcess) -> None:
    def request(seed: int) -> GenerationRequest:
        return GenerationRequest("the water", SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=seed),
                                 max_tokens=24)

    first = await collect(engine.generate(request(7)))
    again = await collect(engine.generate(request(7)))
    other = await collect(engine.generate(request(8)))
    assert first.text == again.text
    assert first.text != other.text


async def test_logprobs_are_a_distribution_and_greedy_picks_the_top(engine: ModelProcess) -> None:
    result = await collect(engine.generate(GenerationRequest("hello", GREEDY, max_tokens=5, logprobs=3)))
    assert len(result.logprobs) == 5
    for lp in result.logprobs:
        assert lp.logprob <= 0
        assert len(lp.top) == 3
        assert lp.top[0].logprob == pytest.approx(lp.logprob)
        assert lp.top[0].logprob >= lp.top[1].logprob >= lp.top[2].logprob
    assert "".join(lp.token for lp in result.logprobs) == result.text


async def test_second_turn_reuses_the_cached_prefix(engine: ModelProcess) -> None:
    first = await collect(engine.generate(GenerationRequest("one two three four five six", GREEDY, max_tokens=4)))
    second = await collect(engine.generate(
        GenerationRequest("one two three four five six" + first.text + " seven", GREEDY, max_tokens=4)))
    assert first.usage.cached_tokens <= 1
    assert second.usage.cached_tokens >= first.usage.prompt_tokens


async def test_closing_the_stream_cancels_generation(engine: ModelProcess) -> None:
    stream = engine.generate(GenerationRequest("hello", GREEDY, max_tokens=400))
    await anext(stream)
    await stream.aclose()
    # The model thread is free again quickly: the next request does not wait for 400 tokens.
    result = await asyncio.wait_for(collect(engine.generate(GenerationRequest("x", GREEDY, max_tokens=2))), 5)
    assert result.usage.completion_tokens == 2


async def test_prompt_longer_than_context_is_refused(engine: ModelProcess) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await collect(engine.generate(GenerationRequest("the " * 600, GREEDY, max_tokens=4)))
    assert info.value.code == "context_length_exceeded"


async def test_max_tokens_is_clamped_to_the_room_left_in_context(engine: ModelProcess) -> None:
    result = await collect(engine.generate(GenerationRequest("the " * 500, GREEDY, max_tokens=400)))
    assert result.usage.prompt_tokens + result.usage.completion_tokens == 512
    assert result.finish_reason == "length"


async def test_unparseable_grammar_is_a_request_error_not_a_crash(engine: ModelProcess) -> None:
    bad = SamplingParams(temperature=0.0, grammar="root ::= (")
    with pytest.raises(InvalidRequestError):
        await collect(engine.generate(GenerationRequest("x", bad, max_tokens=4)))


async def test_grammar_constrains_the_output(engine: ModelProcess) -> None:
    digits = SamplingParams(temperature=0.0, grammar='root ::= [0-9]+ "."')
    result = await collect(engine.generate(GenerationRequest("count", digits, max_tokens=12)))
    assert result.text[:-1].isdigit() or (result.text.isdigit() and result.finish_reason == "length")


async def test_concurrent_requests_are_all_served_in_arrival_order(engine: ModelProcess) -> None:
    # Every answer runs its 8 tokens: batch-dependent rounding could otherwise end one early on the
    # random tiny model, and an answer that ends sooner legitimately finishes first.
    eight = SamplingParams(temperature=0.0, ignore_eos=True)
    order: list[int] = []

    async def one(i: int) -> str:
        result = await collect(engine.generate(GenerationRequest(f"number {i}", eight, max_tokens=8)))
        assert result.usage.completion_tokens == 8
        order.append(i)
        return result.text

    texts = await asyncio.gather(*(one(i) for i in range(4)))
    assert order == [0, 1, 2, 3]
    assert all(texts)


async def test_queue_overflow_is_refused_fast(engine: ModelProcess) -> None:
    # 4 slots and max_queue 4: of 9 requests sent at once, the node refuses the 9th without asking the child.
    assert engine.info.slots == 4
    streams = [engine.generate(GenerationRequest("x", GREEDY, max_tokens=4)) for _ in range(9)]
    started = [asyncio.ensure_future(anext(s)) for s in streams]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    refused = [t for t in started if t.done() and isinstance(t.exception(), QueueFullError)]
    assert len(refused) == 1 and started.index(refused[0]) == 8
    served = await asyncio.gather(*(t for t in started if t not in refused))
    assert len(served) == 8
    for stream in streams:
        await stream.aclose()


async def test_every_llama_call_runs_on_one_thread(tiny_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model process's core, in this process so llama_decode can be watched."""
    import llama_cpp

    engine = await InProcessModel.load("tiny", _settings(tiny_path))

    threads: set[int] = set()
    real = llama_cpp.llama_decode

    def spy(*args):
        threads.add(threading.get_ident())
        return real(*args)

    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_decode", spy)
    monkeypatch.setattr(llama_cpp._internals.llama_cpp, "llama_decode", spy)
    try:
        await asyncio.gather(*(collect(engine.generate(GenerationRequest("hi", GREEDY, max_tokens=3)))
                               for _ in range(3)))
        await engine.embed(["hello"])
    finally:
        await engine.close()
    assert threads == {engine.thread.ident}


async def test_embeddings_are_normalised_vectors(engine: ModelProcess) -> None:
    vectors, tokens = await engine.embed(["hello world", "the water"])
    assert len(vectors) == 2 and len(vectors[0]) == 64
    assert tokens > 2
    assert sum(x * x for x in vectors[0]) == pytest.approx(1.0, abs=1e-4)
    assert not np.array_equal(vectors[0], vectors[1])


async def test_the_model_runs_in_a_process_of_its_own(engine: ModelProcess) -> None:
    assert engine.pid != os.getpid()
    assert engine.info.n_vocab > 0 and engine.info.n_ctx == 512


@pytest.mark.parametrize("where", ["prompt", "detokenize"])
async def test_token_ids_outside_the_vocabulary_are_refused_where_they_meet_llama_cpp(
        engine: ModelProcess, where: str) -> None:
    """The node validates ids first; the model process checks again, so a miss is a 400, never an abort."""
    for bad in (engine.info.n_vocab, 100_000_000, -1):
        with pytest.raises(InvalidRequestError) as info:
            if where == "prompt":
                await collect(engine.generate(GenerationRequest((1, bad), GREEDY, max_tokens=2)))
            else:
                await engine.detokenize([1, bad])
        assert info.value.code == "invalid_token_id"
    result = await collect(engine.generate(GenerationRequest((1, 2, 3), GREEDY, max_tokens=2)))
    assert result.usage.completion_tokens == 2 and engine.failure is None


@pytest.mark.parametrize("signum", [signal.SIGSEGV, signal.SIGKILL])
async def test_a_crash_fails_the_models_requests_and_tells_the_manager(engine: ModelProcess, signum: int) -> None:
    streams = [engine.generate(GenerationRequest(f"story {i}", GREEDY, max_tokens=400)) for i in range(2)]
    for stream in streams:
        await anext(stream)
    waiting = asyncio.ensure_future(engine.tokenize("hello"))
    os.kill(engine.pid, signum)
    for stream in streams:
        with pytest.raises(ModelCrashedError, match=signal.Signals(signum).name):
            async for _ in stream:
                pass
    with pytest.raises(ModelCrashedError):
        await waiting
    assert engine.failed == [engine]  # type: ignore[attr-defined]
    with pytest.raises(ModelCrashedError):
        await engine.tokenize("again")
