"""llama.cpp engine: one model, every call on the model's dedicated thread.

Today it serves one generation at a time (FIFO, bounded queue) with
llama-cpp-python's `Llama.generate`, which reuses the KV cache of a shared
prompt prefix. The interface (`generate`, `embed`, `tokenize`, `stats`) is the
one the continuous-batching scheduler will implement too.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from ..base import (
    FimTokens,
    GenerationChunk,
    GenerationRequest,
    InvalidRequestError,
    ModelLoadError,
    ModelStats,
    TokenLogprob,
    Usage,
)
from ..model_thread import ModelThread
from ..text import TextAssembler
from .logprobs import token_logprob
from .pieces import TokenPieces

if TYPE_CHECKING:
    from llama_cpp import Llama


@dataclass(frozen=True)
class LlamaSettings:
    path: str
    context_size: int = 4096
    threads: int = 0
    """0: every core of the machine."""
    batch: int = 512
    mmap: bool = True
    embeddings: bool = False
    pooling: str = "auto"
    """auto: the GGUF's own pooling type, else mean (a generative model has none)."""
    gpu_layers: int = 0
    tensor_split: tuple[float, ...] | None = None
    """Shares of the offloaded layers per device (RPC workers), in registration order."""
    max_queue: int = 64


def _threads(settings: LlamaSettings) -> int:
    return settings.threads or os.cpu_count() or 1


class LlamaEngine:
    """A loaded GGUF model. Create with `await LlamaEngine.load(name, settings)`."""

    def __init__(self, name: str, settings: LlamaSettings, thread: ModelThread, llm: "Llama") -> None:
        self.name = name
        self.settings = settings
        self._thread = thread
        self._llm = llm
        self._embedder: "Llama | None" = None
        self._decode_tps: float | None = None
        self.metadata: dict[str, str] = dict(llm.metadata)
        self.n_ctx: int = llm.n_ctx()
        self.bos_text = _token_text(llm, llm.token_bos())
        self.eos_text = _token_text(llm, llm.token_eos())
        self._fim = _fim_tokens(llm)
        self._pieces = TokenPieces(llm)

    @classmethod
    async def load(cls, name: str, settings: LlamaSettings) -> "LlamaEngine":
        thread = ModelThread(name, settings.max_queue)
        try:
            llm = await thread.call(_load_llama, settings, False)
        except ModelLoadError:
            thread.stop()
            raise
        return cls(name, settings, thread, llm)

    def stats(self) -> ModelStats:
        return ModelStats(
            loaded=True,
            in_flight=self._thread.running,
            queued=self._thread.pending,
            slots=1,
            decode_tps=self._decode_tps,
        )

    def fim_tokens(self) -> FimTokens | None:
        return self._fim

    async def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return await self._thread.call(self._tokenize, text, add_special)

    async def detokenize(self, tokens: list[int]) -> str:
        def run() -> str:
            return self._llm.detokenize(tokens).decode("utf-8", errors="replace")

        return await self._thread.call(run)

    async def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        """Embed each input; returns the vectors and the number of tokens read."""
        if not self.settings.embeddings:
            raise InvalidRequestError(
                f"model {self.name!r} is not configured for embeddings (set `embeddings: true` in its config)",
                code="embeddings_not_supported",
            )
        return await self._thread.call(self._embed, inputs)

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        return self._thread.stream(lambda emit, cancelled: self._generate(request, emit, cancelled))

    async def close(self) -> None:
        def free() -> None:
            for llm in (self._llm, self._embedder):
                if llm is not None:
                    llm.close()

        await self._thread.call(free, bounded=False)
        self._thread.stop()

    # Everything below runs on the model thread.

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True)

    def _embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        if self._embedder is None:
            self._embedder = _load_llama(self.settings, True)
        vectors, count = self._embedder.embed(inputs, normalize=True, truncate=True, return_count=True)
        return vectors, count

    def _generate(self, request: GenerationRequest, emit: Callable[[Any], None], cancelled: threading.Event) -> None:
        import llama_cpp

        llm = self._llm
        prompt = (
            list(request.prompt)
            if isinstance(request.prompt, tuple)
            else self._tokenize(request.prompt, request.add_special)
        )
        if not prompt:
            raise InvalidRequestError("the prompt is empty", code="empty_prompt")
        room = self.n_ctx - len(prompt)
        if room <= 0:
            raise InvalidRequestError(
                f"the prompt has {len(prompt)} tokens, which does not fit this model's context of {self.n_ctx} tokens",
                code="context_length_exceeded",
            )
        max_tokens = room if request.max_tokens is None else min(request.max_tokens, room)
        sampling = request.sampling
        grammar = _grammar(llm, sampling.grammar) if sampling.grammar else None
        llm.set_seed(sampling.seed if sampling.seed is not None else random.getrandbits(31))
        cached = _reusable_prefix(list(llm.input_ids[: llm.n_tokens]), prompt)
        vocab = llm._model.vocab
        text = TextAssembler(request.stop)
        logprobs: list[TokenLogprob] = []
        finish = "length"
        stop_string_hit = False
        produced = 0
        first_at = last_at = 0.0
        tokens = llm.generate(
            prompt,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            temp=sampling.temperature,
            repeat_penalty=sampling.repeat_penalty,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            grammar=grammar,
        )
        try:
            for token in tokens if max_tokens > 0 else ():
                if cancelled.is_set():
                    finish = "cancelled"
                    break
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                produced += 1
                last_at = time.perf_counter()
                first_at = first_at or last_at
                piece = self._pieces.get(token)
                if request.logprobs is not None:
                    logprobs.append(token_logprob(llm, token, piece, request.logprobs, self._pieces))
                released = text.push(piece)
                if released.text or released.stopped:
                    emit(GenerationChunk(released.text, tuple(logprobs)))
                    logprobs = []
                if released.stopped:
                    finish, stop_string_hit = "stop", True
                    break
                if produced >= max_tokens:
                    break
        finally:
            tokens.close()
        tail = "" if stop_string_hit else text.finish().text
        if produced > 1:
            self._record_speed((produced - 1) / max(last_at - first_at, 1e-9))
        usage = Usage(prompt_tokens=len(prompt), completion_tokens=produced, cached_tokens=cached)
        emit(GenerationChunk(tail, tuple(logprobs), finish_reason=finish, usage=usage))  # type: ignore[arg-type]

    def _record_speed(self, tps: float) -> None:
        """Exponential average, so the router sees recent speed without noise."""
        self._decode_tps = tps if self._decode_tps is None else 0.7 * self._decode_tps + 0.3 * tps


def _load_llama(settings: LlamaSettings, embedding: bool) -> "Llama":
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelLoadError(f"llama-cpp-python is not installed: {exc}") from exc
    if not os.path.isfile(settings.path):
        raise ModelLoadError(f"model file not found: {settings.path}")
    kwargs: dict[str, Any] = {}
    if embedding:
        kwargs["embedding"] = True
        kwargs["pooling_type"] = _pooling(settings)
    try:
        return llama_cpp.Llama(
            model_path=settings.path,
            n_ctx=settings.context_size,
            n_batch=min(settings.batch, settings.context_size) if not embedding else settings.context_size,
            n_ubatch=min(settings.batch, settings.context_size) if not embedding else settings.context_size,
            n_threads=_threads(settings),
            n_threads_batch=_threads(settings),
            use_mmap=settings.mmap,
            n_gpu_layers=settings.gpu_layers,
            tensor_split=list(settings.tensor_split) if settings.tensor_split else None,
            logits_all=False,
            verbose=False,
            **kwargs,
        )
    except Exception as exc:  # llama.cpp reports load failures as ValueError/RuntimeError
        raise ModelLoadError(f"llama.cpp could not load {settings.path}: {exc}") from exc


def _pooling(settings: LlamaSettings) -> int:
    import llama_cpp

    named = {
        "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
        "last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
    }
    if settings.pooling in named:
        return named[settings.pooling]
    from gguf import GGUFReader  # noqa: PLC0415 - only needed to sniff the pooling key

    reader = GGUFReader(settings.path)
    has_own = any(key.endswith(".pooling_type") for key in reader.fields)
    return llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED if has_own else llama_cpp.LLAMA_POOLING_TYPE_MEAN


def _grammar(llm: "Llama", text: str) -> Any:
    """Build a grammar, refusing one llama.cpp cannot parse (it would crash the sampler)."""
    import llama_cpp
    from llama_cpp.llama_grammar import LlamaGrammar

    grammar = LlamaGrammar.from_string(text, verbose=False)
    sampler = llama_cpp.llama_sampler_init_grammar(
        llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
    )
    if not sampler:
        raise InvalidRequestError("the grammar could not be parsed", code="invalid_grammar", param="grammar")
    llama_cpp.llama_sampler_free(sampler)
    return grammar


def _reusable_prefix(cached: list[int], prompt: list[int]) -> int:
    """How many prompt tokens `Llama.generate` will take from the KV cache."""
    common = 0
    for a, b in zip(cached, prompt):
        if a != b:
            break
        common += 1
    return common - 1 if common == len(prompt) else common


def _token_text(llm: "Llama", token: int) -> str:
    return llm._model.token_get_text(token) if token >= 0 else ""


def _fim_tokens(llm: "Llama") -> FimTokens | None:
    import llama_cpp

    vocab = llm._model.vocab
    ids = (
        llama_cpp.llama_vocab_fim_pre(vocab),
        llama_cpp.llama_vocab_fim_suf(vocab),
        llama_cpp.llama_vocab_fim_mid(vocab),
    )
    return FimTokens(*ids) if min(ids) >= 0 else None
