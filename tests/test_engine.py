"""The llama.cpp engine on a tiny real GGUF: correctness against llama-cpp-python itself."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from p2pai.backends.base import GenerationRequest, InvalidRequestError, QueueFullError, SamplingParams
from p2pai.backends.llama import LlamaEngine, LlamaSettings
from p2pai.serving.context import collect
from busy_thread import occupy

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture
async def engine(tiny_path: Path):
    engine = await LlamaEngine.load("tiny", LlamaSettings(path=str(tiny_path), context_size=512, threads=2,
                                                          embeddings=True, max_queue=4))
    yield engine
    await engine.close()


async def test_greedy_output_matches_llama_cpp_python(engine: LlamaEngine, tiny_path: Path) -> None:
    import llama_cpp

    prompt = "the people of the world"
    result = await collect(engine.generate(GenerationRequest(prompt, GREEDY, max_tokens=24)))

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


async def test_stream_pieces_add_up_to_the_whole_answer(engine: LlamaEngine) -> None:
    request = GenerationRequest("hello world", GREEDY, max_tokens=20)
    whole = await collect(engine.generate(request))
    pieces = [chunk async for chunk in engine.generate(request)]
    assert len(pieces) > 5
    assert "".join(p.text for p in pieces) == whole.text
    assert pieces[-1].finish_reason == "length" and pieces[-1].usage is not None


async def test_stop_string_ends_generation_and_is_not_returned(engine: LlamaEngine) -> None:
    full = await collect(engine.generate(GenerationRequest("hello world", GREEDY, max_tokens=30)))
    stop = full.text[10:13]
    assert stop.strip(), "the tiny model's answer should have text to stop on"
    result = await collect(engine.generate(GenerationRequest("hello world", GREEDY, max_tokens=30, stop=(stop,))))
    assert result.finish_reason == "stop"
    assert result.text == full.text[: full.text.index(stop)]
    assert result.usage.completion_tokens < 30


async def test_same_seed_same_sample_and_different_seed_differs(engine: LlamaEngine) -> None:
    def request(seed: int) -> GenerationRequest:
        return GenerationRequest("the water", SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=seed),
                                 max_tokens=24)

    first = await collect(engine.generate(request(7)))
    again = await collect(engine.generate(request(7)))
    other = await collect(engine.generate(request(8)))
    assert first.text == again.text
    assert first.text != other.text


async def test_logprobs_are_a_distribution_and_greedy_picks_the_top(engine: LlamaEngine) -> None:
    result = await collect(engine.generate(GenerationRequest("hello", GREEDY, max_tokens=5, logprobs=3)))
    assert len(result.logprobs) == 5
    for lp in result.logprobs:
        assert lp.logprob <= 0
        assert len(lp.top) == 3
        assert lp.top[0].logprob == pytest.approx(lp.logprob)
        assert lp.top[0].logprob >= lp.top[1].logprob >= lp.top[2].logprob
    assert "".join(lp.token for lp in result.logprobs) == result.text


async def test_second_turn_reuses_the_cached_prefix(engine: LlamaEngine) -> None:
    first = await collect(engine.generate(GenerationRequest("one two three four five six", GREEDY, max_tokens=4)))
    second = await collect(engine.generate(
        GenerationRequest("one two three four five six" + first.text + " seven", GREEDY, max_tokens=4)))
    assert first.usage.cached_tokens <= 1
    assert second.usage.cached_tokens >= first.usage.prompt_tokens


async def test_closing_the_stream_cancels_generation(engine: LlamaEngine) -> None:
    stream = engine.generate(GenerationRequest("hello", GREEDY, max_tokens=400))
    await anext(stream)
    await stream.aclose()
    # The model thread is free again quickly: the next request does not wait for 400 tokens.
    result = await asyncio.wait_for(collect(engine.generate(GenerationRequest("x", GREEDY, max_tokens=2))), 5)
    assert result.usage.completion_tokens == 2


async def test_prompt_longer_than_context_is_refused(engine: LlamaEngine) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await collect(engine.generate(GenerationRequest("the " * 600, GREEDY, max_tokens=4)))
    assert info.value.code == "context_length_exceeded"


async def test_max_tokens_is_clamped_to_the_room_left_in_context(engine: LlamaEngine) -> None:
    result = await collect(engine.generate(GenerationRequest("the " * 500, GREEDY, max_tokens=400)))
    assert result.usage.prompt_tokens + result.usage.completion_tokens == 512
    assert result.finish_reason == "length"


async def test_unparseable_grammar_is_a_request_error_not_a_crash(engine: LlamaEngine) -> None:
    bad = SamplingParams(temperature=0.0, grammar="root ::= (")
    with pytest.raises(InvalidRequestError):
        await collect(engine.generate(GenerationRequest("x", bad, max_tokens=4)))


async def test_grammar_constrains_the_output(engine: LlamaEngine) -> None:
    digits = SamplingParams(temperature=0.0, grammar='root ::= [0-9]+ "."')
    result = await collect(engine.generate(GenerationRequest("count", digits, max_tokens=12)))
    assert result.text[:-1].isdigit() or (result.text.isdigit() and result.finish_reason == "length")


async def test_concurrent_requests_are_all_served_in_arrival_order(engine: LlamaEngine) -> None:
    order: list[int] = []

    async def one(i: int) -> str:
        result = await collect(engine.generate(GenerationRequest(f"number {i}", GREEDY, max_tokens=8)))
        order.append(i)
        return result.text

    texts = await asyncio.gather(*(one(i) for i in range(4)))
    assert order == [0, 1, 2, 3]
    assert all(texts)


async def test_queue_overflow_is_refused_fast(engine: LlamaEngine) -> None:
    # Hold the model thread so the burst really waits; max_queue is 4.
    gate, busy = await occupy(engine._thread)
    streams = [engine.generate(GenerationRequest("x", GREEDY, max_tokens=4)) for _ in range(5)]
    started = [asyncio.ensure_future(anext(s)) for s in streams]
    await asyncio.sleep(0.1)
    refused = [t for t in started if t.done() and isinstance(t.exception(), QueueFullError)]
    assert len(refused) == 1
    gate.set()
    await busy
    served = await asyncio.gather(*(t for t in started if t not in refused))
    assert len(served) == 4
    for stream in streams:
        await stream.aclose()


async def test_every_llama_call_runs_on_one_thread(engine: LlamaEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_cpp

    threads: set[int] = set()
    real = llama_cpp.llama_decode

    def spy(*args):
        threads.add(threading.get_ident())
        return real(*args)

    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_decode", spy)
    monkeypatch.setattr(llama_cpp._internals.llama_cpp, "llama_decode", spy)
    await asyncio.gather(*(collect(engine.generate(GenerationRequest("hi", GREEDY, max_tokens=3))) for _ in range(3)))
    await engine.embed(["hello"])
    assert len(threads) == 1 and threading.get_ident() not in threads


async def test_embeddings_are_normalised_vectors(engine: LlamaEngine) -> None:
    vectors, tokens = await engine.embed(["hello world", "the water"])
    assert len(vectors) == 2 and len(vectors[0]) == 64
    assert tokens > 2
    assert sum(x * x for x in vectors[0]) == pytest.approx(1.0, abs=1e-4)
    assert vectors[0] != vectors[1]
