"""llama.cpp engine: one model, every llama call on the model's dedicated thread.

Generation goes through the continuous-batching `Scheduler`, which the model
thread steps between other calls (tokenize, embed...); `parallel: 1` is the
same scheduler with one slot.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, AsyncIterator

from ..base import (
    FimTokens,
    GenerationChunk,
    GenerationRequest,
    InvalidRequestError,
    ModelLoadError,
    ModelStats,
)
from ..model_thread import ModelThread
from .loading import LlamaSettings, LoadedModel, load_embedder, load_generator
from .pieces import TokenPieces
from .scheduler import Scheduler, Sequence

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp._internals import LlamaModel


class LlamaEngine:
    """A loaded GGUF model. Create with `await LlamaEngine.load(name, settings)`."""

    def __init__(self, name: str, settings: LlamaSettings, thread: ModelThread, loaded: LoadedModel) -> None:
        self.name = name
        self.settings = settings
        self._thread = thread
        self._loaded = loaded
        self._model = loaded.model
        self._embedder: "Llama | None" = None
        self.metadata: dict[str, str] = loaded.model.metadata()
        self.bos_text = _token_text(loaded.model, loaded.model.token_bos())
        self.eos_text = _token_text(loaded.model, loaded.model.token_eos())
        self._fim = _fim_tokens(loaded.model)
        self.scheduler = Scheduler(loaded, TokenPieces(loaded.model.vocab), settings.max_queue)
        self.n_ctx: int = self.scheduler.n_ctx
        """Context of one request (one slot)."""
        thread.attach(self.scheduler)

    @classmethod
    async def load(cls, name: str, settings: LlamaSettings) -> "LlamaEngine":
        thread = ModelThread(name, settings.max_queue)
        try:
            loaded = await thread.call(load_generator, settings)
            # The scheduler allocates its batch with llama.cpp: on the model thread too.
            return await thread.call(cls, name, settings, thread, loaded)
        except ModelLoadError:
            thread.stop()
            raise

    def stats(self) -> ModelStats:
        """in_flight: requests holding a slot; queued: requests waiting for one; decode_tps: all slots together."""
        return ModelStats(
            loaded=True,
            in_flight=self.scheduler.active,
            queued=self.scheduler.waiting,
            slots=len(self.scheduler.slots),
            decode_tps=self.scheduler.decode_tps,
        )

    def fim_tokens(self) -> FimTokens | None:
        return self._fim

    async def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return await self._thread.call(self._model.tokenize, text.encode("utf-8"), add_special, True)

    async def detokenize(self, tokens: list[int]) -> str:
        def run() -> str:
            return self._model.detokenize(tokens).decode("utf-8", errors="replace")

        return await self._thread.call(run)

    async def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        """Embed each input; returns the vectors and the number of tokens read."""
        if not self.settings.embeddings:
            raise InvalidRequestError(
                f"model {self.name!r} is not configured for embeddings (set `embeddings: true` in its config)",
                code="embeddings_not_supported",
            )
        return await self._thread.call(self._embed, inputs)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Queue the request (QueueFullError when the queue is full) and stream its chunks.

        Closing the iterator cancels the request: it leaves the queue, or its slot at the next step.
        """
        seq = Sequence(request, asyncio.get_running_loop())
        self.scheduler.submit(seq)
        self._thread.wake()
        try:
            while True:
                item = await seq.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            self.scheduler.cancel(seq)

    async def close(self) -> None:
        def free() -> None:
            self.scheduler.close()
            if self._embedder is not None:
                self._embedder.close()
            self._loaded.close()

        await self._thread.call(free, bounded=False)
        self._thread.stop()

    def _embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        if self._embedder is None:
            self._embedder = load_embedder(self.settings)
        vectors, count = self._embedder.embed(inputs, normalize=True, truncate=True, return_count=True)
        return vectors, count


def _token_text(model: "LlamaModel", token: int) -> str:
    return model.token_get_text(token) if token >= 0 else ""


def _fim_tokens(model: "LlamaModel") -> FimTokens | None:
    import llama_cpp

    ids = (
        llama_cpp.llama_vocab_fim_pre(model.vocab),
        llama_cpp.llama_vocab_fim_suf(model.vocab),
        llama_cpp.llama_vocab_fim_mid(model.vocab),
    )
    return FimTokens(*ids) if min(ids) >= 0 else None
