"""What every endpoint needs first: the model asked for, loaded, and its defaults applied."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from ..backends.base import (
    Engine,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    InvalidRequestError,
    SamplingParams,
    TokenLogprob,
    Usage,
)
from ..backends.tasks import Task, task_not_served
from ..metrics import (
    COMPLETION_TOKENS,
    MODEL_REQUESTS,
    PROMPT_TOKENS,
    REQUEST_DURATION,
    TIME_TO_FIRST_TOKEN,
    labelled,
    model_label,
)
from ..models.config import ModelConfig
from ..protocol.openai import CompletionUsage, PromptTokensDetails
from .chat_prompt import ChatTemplate, chat_template
from .limits import Limits
from .manager import ModelManager


@dataclass
class ServedModel:
    config: ModelConfig
    engine: Engine
    template: ChatTemplate
    limits: Limits

    @property
    def name(self) -> str:
        return self.config.name

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """The engine's chunks, measured: time to first token, duration and tokens."""
        return _measured(self.engine.generate(request), model_label(self.name))

    def count_input(self, tokens: int) -> None:
        """Tokens read by a request that generates nothing (embeddings, rerank)."""
        labelled(PROMPT_TOKENS, model_label(self.name)).inc(tokens)

    def sampling(self, request: Any, grammar: str | None) -> SamplingParams:
        """Request values first, then the model's YAML defaults, then llama.cpp's."""
        defaults = self.config.parameters
        base = SamplingParams()

        def pick(name: str) -> Any:
            value = getattr(request, name, None)
            if value is None:
                value = getattr(defaults, name, None)
            return getattr(base, name) if value is None else value

        seed = pick("seed")
        return SamplingParams(
            temperature=pick("temperature"),
            top_p=pick("top_p"),
            top_k=pick("top_k"),
            min_p=pick("min_p"),
            repeat_penalty=pick("repeat_penalty"),
            presence_penalty=pick("presence_penalty"),
            frequency_penalty=pick("frequency_penalty"),
            seed=seed,
            grammar=grammar,
            typical_p=pick("typical_p"),
            mirostat=pick("mirostat"),
            mirostat_tau=pick("mirostat_tau"),
            mirostat_eta=pick("mirostat_eta"),
            repeat_last_n=pick("repeat_last_n"),
            ignore_eos=pick("ignore_eos"),
        )

    def max_tokens(self, requested: int | None, default: int | None = None) -> int | None:
        limit = requested or self.config.parameters.max_tokens or default
        n_ctx = self.engine.info.n_ctx
        if limit is not None and limit > n_ctx:
            raise InvalidRequestError(
                f"max_tokens is {limit}, more than this model's context of {n_ctx} tokens",
                code="context_length_exceeded",
                param="max_tokens",
            )
        return limit


class Serving:
    """Resolves model names for the endpoint handlers."""

    def __init__(self, manager: ModelManager, limits: Limits | None = None) -> None:
        self.manager = manager
        self.limits = limits or Limits()
        self._templates: dict[str, ChatTemplate] = {}

    async def model(self, name: str | None, task: Task | None) -> ServedModel:
        """The model asked for, if it serves ``task`` (None: any); with none named, the one model here
        serving the task (as LocalAI does with its only model), or the default (the built-in chat model)."""
        manager = self.manager
        if not name:
            names = [n for n in manager.names() if task is None or task in manager.tasks(n)]
            if len(names) != 1 and manager.catalog.default in names:
                names = [manager.catalog.default]
            if len(names) != 1:
                raise InvalidRequestError(
                    "you must provide a model parameter" + (f" (one of: {', '.join(names)})" if names else ""),
                    code="model_required",
                    param="model",
                )
            name = names[0]
        config = manager.config(name)
        if task is not None and task not in (served := manager.tasks(name)):
            raise task_not_served(name, task, served)
        labelled(MODEL_REQUESTS, model_label(name), task or "any").inc()
        engine = await manager.engine(name)
        template = self._templates.get(name)
        if template is None:
            info = engine.info
            template = chat_template(config, info.metadata, info.bos_text, info.eos_text)
            self._templates[name] = template
        return ServedModel(config, engine, template, self.limits)


async def _measured(chunks: AsyncIterator[GenerationChunk], model: str) -> AsyncIterator[GenerationChunk]:
    started = time.perf_counter()
    first = True
    try:
        async for chunk in chunks:
            if first:
                first = False
                labelled(TIME_TO_FIRST_TOKEN, model).observe(time.perf_counter() - started)
            if chunk.usage is not None:
                labelled(REQUEST_DURATION, model).observe(time.perf_counter() - started)
                labelled(PROMPT_TOKENS, model).inc(chunk.usage.prompt_tokens)
                labelled(COMPLETION_TOKENS, model).inc(chunk.usage.completion_tokens)
            yield chunk
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


@dataclass
class Completion:
    """One choice generated to the end."""

    text: str
    logprobs: list[TokenLogprob]
    finish_reason: FinishReason
    usage: Usage
    stop_sequence: str | None = None


async def collect(chunks: AsyncIterator[GenerationChunk]) -> Completion:
    parts: list[str] = []
    logprobs: list[TokenLogprob] = []
    async for chunk in chunks:
        parts.append(chunk.text)
        logprobs.extend(chunk.logprobs)
        if chunk.finish_reason is not None:
            assert chunk.usage is not None
            return Completion("".join(parts), logprobs, chunk.finish_reason, chunk.usage, chunk.stop_sequence)
    raise RuntimeError("the engine ended a generation without a final chunk")


async def primed(chunks: AsyncIterator[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
    """Start a generation and wait for its first chunk.

    Queue-full and prompt errors then surface before any response byte is
    sent, so they reach the client with their own HTTP status.
    """
    first = await anext(chunks)

    async def replay() -> AsyncIterator[GenerationChunk]:
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    return replay()


def with_seed(request: GenerationRequest, index: int) -> GenerationRequest:
    """Choice `index` of n: a seeded request stays reproducible yet gives n different answers."""
    if index == 0 or request.sampling.seed is None:
        return request
    return replace(request, sampling=replace(request.sampling, seed=request.sampling.seed + index))


def total_usage(usages: list[Usage], prompt_once: bool) -> CompletionUsage:
    """OpenAI usage: with n choices of one prompt, the prompt is counted once."""
    prompt = usages[0].prompt_tokens if prompt_once else sum(u.prompt_tokens for u in usages)
    cached = usages[0].cached_tokens if prompt_once else sum(u.cached_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                           prompt_tokens_details=PromptTokensDetails(cached_tokens=cached))


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())

