"""POST /v1/embeddings and /v1/tokenize."""

from __future__ import annotations

import base64
import math

import numpy as np

from ..backends.base import InvalidRequestError
from ..protocol.openai import (
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    TokenizeRequest,
    Tokens,
)
from .context import ServedModel
from .validation import check_count, check_token_prompt


async def embed(served: ServedModel, request: EmbeddingRequest) -> EmbeddingList:
    texts = await _texts(served, request.input)
    vectors, tokens = await served.engine.embed(texts)
    data = []
    for index, vector in enumerate(vectors):
        if request.dimensions is not None:
            vector = _shorten(vector, request.dimensions)
        data.append(Embedding(index=index, embedding=_encode(vector, request.encoding_format)))
    return EmbeddingList(data=data, model=served.name, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))


async def _texts(served: ServedModel, given: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    """The inputs as text (token ids are detokenized), checked against the node's and the model's limits."""
    if isinstance(given, str):
        return [given]
    engine = served.engine
    if isinstance(given[0], int):
        ids: list[int] = given  # type: ignore[assignment]  # one input of token ids
        check_token_prompt(ids, engine.info.n_vocab, engine.info.n_ctx, "input")
        return [await engine.detokenize(ids)]
    check_count(len(given), served.limits.max_prompts, "inputs", "input")
    if isinstance(given[0], list):
        lists: list[list[int]] = given  # type: ignore[assignment]
        for tokens in lists:
            check_token_prompt(tokens, engine.info.n_vocab, engine.info.n_ctx, "input")
        return [await engine.detokenize(tokens) for tokens in lists]
    return list(given)  # type: ignore[arg-type]


def _shorten(vector: list[float], dimensions: int) -> list[float]:
    """OpenAI's `dimensions`: keep the first N components and renormalise."""
    if dimensions > len(vector):
        raise InvalidRequestError(
            f"dimensions is {dimensions} but the model's embeddings have {len(vector)}", param="dimensions"
        )
    head = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in head)) or 1.0
    return [x / norm for x in head]


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


async def tokenize(served: ServedModel, request: TokenizeRequest) -> Tokens:
    return Tokens(tokens=await served.engine.tokenize(request.text(), request.add_special))
