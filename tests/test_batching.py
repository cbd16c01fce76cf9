"""Continuous batching on the tiny real GGUF: concurrent sequences of one context, no mocks.

The reference for every concurrent result is the same request served alone by
an engine with one slot (the one-at-a-time path) or by llama-cpp-python itself.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from host_harness import InProcessModel
from p2pai.backends.base import GenerationRequest, SamplingParams
from p2pai.backends.llama import LlamaSettings
from p2pai.serving.context import Completion, collect

GREEDY = SamplingParams(temperature=0.0)
DIGITS = SamplingParams(temperature=0.0, grammar='root ::= [0-9]+ "."')


def seeded(seed: int) -> SamplingParams:
    return SamplingParams(temperature=1.2, top_k=40, top_p=0.95, min_p=0.05, seed=seed)


MIXED = [
    GenerationRequest("the people of the world", GREEDY, max_tokens=40),
    GenerationRequest("hello", GREEDY, max_tokens=12, logprobs=2),
    GenerationRequest("count", DIGITS, max_tokens=16),
    GenerationRequest("one two three four five six seven eight", GREEDY, max_tokens=30),
    GenerationRequest("the water", seeded(11), max_tokens=25),
]


async def _load(tiny_path: Path, parallel: int, **kwargs) -> InProcessModel:
    settings = LlamaSettings(path=str(tiny_path), context_size=512, threads=2, parallel=parallel, **kwargs)
    return await InProcessModel.load("tiny", settings)


@pytest.fixture
async def engine(tiny_path: Path):
    engine = await _load(tiny_path, 4)
    yield engine
    await engine.close()


@pytest.fixture
async def single(tiny_path: Path):
    engine = await _load(tiny_path, 1)
    yield engine
    await engine.close()


async def _alone(engine: InProcessModel, requests: list[GenerationRequest]) -> list[Completion]:
    return [await collect(engine.generate(r)) for r in requests]


def _same(a: Completion, b: Completion) -> None:
    assert a.text == b.text
    assert a.finish_reason == b.finish_reason
    assert (a.usage.prompt_tokens, a.usage.completion_tokens) == (b.usage.prompt_tokens, b.usage.completion_tokens)
    assert [lp.token for lp in a.logprobs] == [lp.token for lp in b.logprobs]
    # Batched matrix products (and flash attention's tiles) sum in another order: the same tokens,
    # logprobs equal to float noise.
    assert [lp.logprob for lp in a.logprobs] == pytest.approx([lp.logprob for lp in b.logprobs], abs=2e-3)


async def test_concurrent_sequences_match_the_one_slot_engine(engine: InProcessModel, single: InProcessModel) -> None:
    expected = await _alone(single, MIXED)
    got = await asyncio.gather(*(collect(engine.generate(r)) for r in MIXED))
    for a, b in zip(got, expected, strict=True):
        _same(a, b)
    # They really shared batches: up to four sequences sampled in one decode step.
    assert max(record.generated for record in engine.scheduler.history) == 4
    assert expected[2].text[:-1].isdigit() or expected[2].finish_reason == "length"


async def test_seeded_sampling_is_the_same_concurrently_and_alone(engine: InProcessModel, tiny_path: Path) -> None:
    import llama_cpp

    requests = [GenerationRequest("the water", seeded(seed), max_tokens=24) for seed in (1, 2, 3, 4)]
    alone = await _alone(engine, requests)
    together = await asyncio.gather(*(collect(engine.generate(r)) for r in requests))
    for a, b in zip(together, alone, strict=True):
        _same(a, b)
    assert len({c.text for c in alone}) == 4

    def reference() -> str:
        llm = llama_cpp.Llama(str(tiny_path), n_ctx=512, n_threads=2, verbose=False)
        out = llm.create_completion("the water", max_tokens=24, temperature=1.2, top_k=40, top_p=0.95, min_p=0.05,
                                    repeat_penalty=1.0, seed=1)
        llm.close()
        return out["choices"][0]["text"]

    # The sampler chain is llama-cpp-python's own: the same seed draws the same tokens.
    assert alone[0].text.replace("\ufffd", "") == await asyncio.to_thread(reference)


async def test_cancelling_one_stream_leaves_the_others_intact(engine: InProcessModel) -> None:
    requests = [GenerationRequest(p, GREEDY, max_tokens=60) for p in ("hello world", "the people", "one two")]
    expected = await _alone(engine, requests)
    streams = [engine.generate(r) for r in requests]
    firsts = [await anext(s) for s in streams]
    assert engine.scheduler.active == 3
    await streams[1].aclose()
    rest = await asyncio.gather(*(collect(streams[i]) for i in (0, 2)))
    for i, result in zip((0, 2), rest, strict=True):
        assert firsts[i].text + result.text == expected[i].text
        assert result.usage.completion_tokens == 60
    assert engine.scheduler.active == 0
    assert engine.stats().in_flight == 0


async def test_stop_strings_max_tokens_and_errors_are_per_sequence(engine: InProcessModel) -> None:
    full = await collect(engine.generate(GenerationRequest("hello world", GREEDY, max_tokens=30)))
    stop = full.text[10:13]
    assert stop.strip()
    requests = [
        GenerationRequest("hello world", GREEDY, max_tokens=30, stop=(stop,)),
        GenerationRequest("hello world", GREEDY, max_tokens=5),
        GenerationRequest("the " * 600, GREEDY, max_tokens=4),  # longer than a slot's context
        GenerationRequest("hello world", GREEDY, max_tokens=30),
    ]
    stopped, short, too_long, whole = await asyncio.gather(
        *(collect(engine.generate(r)) for r in requests), return_exceptions=True)
    assert stopped.finish_reason == "stop" and stopped.text == full.text[: full.text.index(stop)]
    assert short.finish_reason == "length" and short.usage.completion_tokens == 5
    assert full.text.startswith(short.text)
    assert getattr(too_long, "code", None) == "context_length_exceeded"
    assert "512 tokens per request" in str(too_long)
    _same(whole, full)


async def test_a_long_prompt_is_read_in_chunks_while_others_keep_streaming(tiny_path: Path) -> None:
    streaming = GenerationRequest("hello world", GREEDY, max_tokens=150)
    long = GenerationRequest("the people of the world " * 90, GREEDY, max_tokens=8)
    reference = await _load(tiny_path, 4, batch=64)
    expected_stream, expected_long = await _alone(reference, [streaming, long])
    await reference.close()  # a cold engine below: nothing of the long prompt is cached
    assert expected_long.usage.prompt_tokens > 6 * 64
    engine = await _load(tiny_path, 4, batch=64)
    try:

        stream = engine.generate(streaming)
        first = await anext(stream)
        before = len(engine.scheduler.history)
        long_result = await collect(engine.generate(long))
        steps = list(engine.scheduler.history)[before:]
        rest = await collect(stream)

        reading = [s for s in steps if s.prompt]
        assert sum(s.prompt for s in reading) == long_result.usage.prompt_tokens - long_result.usage.cached_tokens
        assert len(reading) >= 6, "the prompt is read in batch-sized chunks, one per step"
        assert all(s.generated >= 1 for s in reading), "every chunk step also decoded the running stream"
        assert all(s.prompt + s.generated <= 64 for s in steps)
        assert first.text + rest.text == expected_stream.text
        _same(long_result, expected_long)
    finally:
        await engine.close()


async def test_the_next_chat_turn_reuses_its_slots_cached_prefix(engine: InProcessModel) -> None:
    chat_a = "one two three four five six seven eight nine ten"
    chat_b = "the people of the world and the water of the sea"
    first_a = await collect(engine.generate(GenerationRequest(chat_a, GREEDY, max_tokens=8)))
    first_b = await collect(engine.generate(GenerationRequest(chat_b, GREEDY, max_tokens=8)))
    assert first_a.usage.cached_tokens <= 1 and first_b.usage.cached_tokens <= 1

    before = len(engine.scheduler.history)
    second_a = await collect(engine.generate(GenerationRequest(chat_a + first_a.text + " eleven", GREEDY,
                                                               max_tokens=8)))
    read = sum(s.prompt for s in list(engine.scheduler.history)[before:])
    # Chat A's slot was chosen (not B's, not an empty one): its whole first prompt came from the KV cache.
    assert second_a.usage.cached_tokens >= first_a.usage.prompt_tokens
    assert read == second_a.usage.prompt_tokens - second_a.usage.cached_tokens
    assert read < first_a.usage.prompt_tokens

    # Reused KV gives the same answer as a cold start.
    cold = await _load_cold(engine, GenerationRequest(chat_a + first_a.text + " eleven", GREEDY, max_tokens=8))
    assert cold.usage.cached_tokens == 0
    _same(second_a, cold)


async def _load_cold(engine: InProcessModel, request: GenerationRequest) -> Completion:
    fresh = await InProcessModel.load("cold", engine.settings)
    try:
        return await collect(fresh.generate(request))
    finally:
        await fresh.close()


async def test_full_slots_queue_fairly(tiny_path: Path) -> None:
    engine = await _load(tiny_path, 2)
    try:
        running = [engine.generate(GenerationRequest(f"run {i}", GREEDY)) for i in range(2)]
        for stream in running:
            await anext(stream)
        # Hold the thread so nothing finishes while the queue fills: deterministic.
        gate, busy = await engine.hold()
        order: list[int] = []

        async def waiter(i: int) -> Completion:
            result = await collect(engine.generate(GenerationRequest(f"wait {i}", GREEDY, max_tokens=3)))
            order.append(i)
            return result

        waiting = [asyncio.ensure_future(waiter(i)) for i in range(2)]
        for _ in range(100):
            if engine.scheduler.waiting == 2:
                break
            await asyncio.sleep(0.01)
        stats = engine.stats()
        assert (stats.slots, stats.in_flight, stats.queued) == (2, 2, 2)
        await running[0].aclose()  # one slot frees at the next step: the first waiter takes it
        gate.set()
        await busy
        first = await waiting[0]
        await running[1].aclose()
        await waiting[1]
        assert order == [0, 1] and first.usage.completion_tokens == 3
        for _ in range(500):  # the cancelled stream leaves its slot at the next step
            if engine.stats().in_flight == 0:
                break
            await asyncio.sleep(0.01)
        stats = engine.stats()
        assert stats.in_flight == 0 and stats.decode_tps > 0
    finally:
        await engine.close()
