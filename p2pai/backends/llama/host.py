"""A GGUF model inside its own process: loaded, batched, and served from the model's one thread.

Generation goes through the continuous-batching `Scheduler`, which the model
loop steps between other calls (tokenize, embed...); `parallel: 1` is the same
scheduler with one slot. Everything here runs on the model loop's thread except
`submit` and `cancel`, which the thread receiving requests calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..base import FimTokens, InvalidRequestError, ModelInfo
from ..model_loop import ModelLoop
from .loading import LlamaSettings, load_embedder, load_generator
from .pieces import TokenPieces
from .scheduler import Deliver, Scheduler, Sequence
from .tokens import check_token_ids

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp._internals import LlamaModel


class LlamaHost:
    def __init__(self, name: str, settings: LlamaSettings, loop: ModelLoop, deliver: Deliver) -> None:
        """Load the model (ModelLoadError if it cannot be); call on the model loop's thread."""
        import llama_cpp

        self.name = name
        self.settings = settings
        self._loop = loop
        self._loaded = load_generator(settings)
        model = self._loaded.model
        self._model = model
        self._embedder: Llama | None = None
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(model.vocab)
        self.scheduler = Scheduler(self._loaded, TokenPieces(model.vocab), deliver)
        loop.attach(self.scheduler)

    def info(self) -> ModelInfo:
        model = self._model
        return ModelInfo(
            metadata=model.metadata(),
            bos_text=_token_text(model, model.token_bos()),
            eos_text=_token_text(model, model.token_eos()),
            fim=_fim_tokens(model),
            n_ctx=self.scheduler.n_ctx,
            n_vocab=self.n_vocab,
            slots=len(self.scheduler.slots),
        )

    # On the receiving thread

    def submit(self, seq: Sequence) -> None:
        """Queue a generation; its chunks leave through `deliver`."""
        self.scheduler.submit(seq)
        self._loop.wake()

    def cancel(self, seq: Sequence) -> None:
        """It leaves the queue now, or its slot at the next step."""
        self.scheduler.cancel(seq)

    # On the model loop's thread

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self._model.tokenize(text.encode("utf-8"), add_special, True)

    def detokenize(self, tokens: list[int]) -> str:
        ids = check_token_ids(tokens, self.n_vocab, "tokens")
        return self._model.detokenize(ids).decode("utf-8", errors="replace")

    def embed(self, inputs: list[str]) -> tuple[np.ndarray, int]:
        """Each input's vector and the number of tokens read."""
        if not self.settings.embeddings:
            raise InvalidRequestError(
                f"model {self.name!r} is not configured for embeddings (set `embeddings: true` in its config)",
                code="embeddings_not_supported",
            )
        if self._embedder is None:
            self._embedder = load_embedder(self.settings)
        vectors, count = self._embedder.embed(inputs, normalize=True, truncate=True, return_count=True)
        return np.asarray(vectors, dtype=np.float32), count

    def close(self) -> None:
        self.scheduler.close()
        if self._embedder is not None:
            self._embedder.close()
        self._loaded.close()


def _token_text(model: LlamaModel, token: int) -> str:
    return model.token_get_text(token) if token >= 0 else ""


def _fim_tokens(model: LlamaModel) -> FimTokens | None:
    import llama_cpp

    ids = (
        llama_cpp.llama_vocab_fim_pre(model.vocab),
        llama_cpp.llama_vocab_fim_suf(model.vocab),
        llama_cpp.llama_vocab_fim_mid(model.vocab),
    )
    return FimTokens(*ids) if min(ids) >= 0 else None
