"""Types shared by every backend: what a generation asks for and what it yields.

The serving layer speaks only these types to an engine, so the engine behind
them (today llama.cpp with continuous batching) can change without touching the API.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol

import numpy as np

from .transcription import AudioInfo, Segment, TranscriptionJob

FinishReason = Literal["stop", "length", "cancelled"]


class BackendError(Exception):
    """Base of errors a backend reports to the serving layer."""


class ModelLoadError(BackendError):
    """The model could not be loaded; the message says why."""


class QueueFullError(BackendError):
    """The model's queue is full; the caller should retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelCrashedError(BackendError):
    """The model's process died (abort, segfault, OOM kill) while serving the request.

    Another node would likely crash the same way on the same request, so this is
    never a reason to try one (no query of death across the swarm)."""


class WorkerLostError(BackendError):
    """An RPC worker of this model died, froze or refused during the request."""


class ModelRestartingError(BackendError):
    """The model keeps crashing: it is not restarted again before `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidRequestError(BackendError):
    """The request cannot be served by this model as asked (bad grammar, too long...)."""

    def __init__(self, message: str, code: str = "invalid_request", param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


@dataclass(frozen=True)
class SamplingParams:
    """Sampler settings; defaults follow llama.cpp's server."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    grammar: str | None = None
    """GBNF text constraining the output (from response_format, tools or `grammar`)."""
    typical_p: float = 1.0
    """Locally typical sampling; 1.0: off."""
    mirostat: int = 0
    """0: off; 1 or 2: Mirostat v1 or v2 in place of top-k/top-p/min-p (llama.cpp's `mirostat`)."""
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    repeat_last_n: int = 64
    """Tokens the penalties look back over (-1: the whole context so far, as llama.cpp has it)."""
    ignore_eos: bool = False
    """End-of-generation tokens can never be sampled: generation runs to max_tokens or a stop string."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str | tuple[int, ...]
    """Text to tokenize, or token ids used as they are."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None
    """None: until end of generation or the context is full."""
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    """None: no logprobs; N >= 0: the chosen token's logprob plus the N most likely."""
    add_special: bool = True
    """Let the tokenizer add BOS; False when a chat template already wrote it."""


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    """Prompt tokens whose KV cache was reused instead of recomputed."""


@dataclass(frozen=True)
class GenerationChunk:
    """A piece of output text, with the logprobs of the tokens it came from.

    The last chunk of a generation carries `finish_reason` and `usage`.
    """

    text: str = ""
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    stop_sequence: str | None = None
    """On the last chunk: the stop string that ended the generation, if one did."""

    is_output: ClassVar[bool] = True

    @property
    def ends_stream(self) -> bool:
        return self.finish_reason is not None

    @property
    def answer_tokens(self) -> int | None:
        return None if self.usage is None else self.usage.completion_tokens


class StreamItem(Protocol):
    """What the node's handle on a model process (process.py) asks of each item a streamed call yields:
    a generation's chunks (GenerationChunk) or a transcription's items (transcription.py)."""

    @property
    def ends_stream(self) -> bool:
        """It is the last item: the child is done with the request."""
        ...

    @property
    def answer_tokens(self) -> int | None:
        """The answer's length in tokens, counted into the model's mean answer length (None: not counted)."""
        ...

    @property
    def is_output(self) -> bool:
        """The caller reads it (False: it only marks the end)."""
        ...


@dataclass(frozen=True)
class FimTokens:
    """Special tokens for fill-in-the-middle prompts (code models)."""

    prefix: int
    suffix: int
    middle: int


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model tells the serving layer about itself, once."""

    metadata: dict[str, str]
    bos_text: str
    eos_text: str
    fim: FimTokens | None
    n_ctx: int
    """Context of one request (one slot)."""
    n_vocab: int
    """Token ids a request may use: [0, n_vocab)."""
    slots: int
    providers: tuple[str, ...] = ()
    """ONNX Runtime's execution providers in use (session.get_providers()); empty for llama.cpp."""
    max_input_chars: int | None = None
    """Longest text input the model takes, checked before it is tokenized; None: any (it is truncated)."""


@dataclass(frozen=True)
class ModelStats:
    """Live figures the router and /api/p2p use to judge a model's load."""

    loaded: bool
    in_flight: int
    """Requests holding a slot (being generated)."""
    queued: int
    """Requests waiting for a free slot."""
    slots: int
    """Requests the model decodes together (`parallel`); 0: not known until loaded."""
    decode_tps: float | None
    """Aggregate decode speed, all slots together (tokens/s, recent average); one of
    `in_flight` streams sees about decode_tps / in_flight. None: nothing decoded yet."""
    answer_tokens: float | None = None
    """Tokens a generation produced (recent average): with decode_tps, how long a slot stays taken."""
    crashes: int = 0
    """Times the model's process died since the node started."""
    last_crash: str | None = None
    pid: int | None = None
    """The model's process, while it runs."""
    providers: tuple[str, ...] = ()
    """ONNX Runtime's execution providers in use, once loaded."""
    calls: int = 0
    """Other calls in progress (embed, rerank, tokenize...): the model is in use."""
    submitted: int = 0
    """Requests and calls the model has received since it started: when it grows, a request reached it."""


class Engine(Protocol):
    """One loaded model: submit a request, receive chunks, cancel by closing the iterator."""

    info: ModelInfo

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]: ...

    async def embed(self, inputs: list[str]) -> tuple[np.ndarray, int]:
        """One float32 row per input, and the tokens read."""
        ...

    async def rerank(self, query: str, documents: list[str]) -> tuple[np.ndarray, int]:
        """Each document's relevance to the query in [0, 1], and the tokens read."""
        ...

    def transcribe(self, job: TranscriptionJob) -> AsyncGenerator[AudioInfo | Segment, None]:
        """AudioInfo first, then each segment as it is decoded (speech models)."""
        ...

    async def tokenize(self, text: str, add_special: bool = True) -> list[int]: ...

    async def detokenize(self, tokens: list[int]) -> str: ...

    def stats(self) -> ModelStats: ...

    async def close(self) -> None: ...
