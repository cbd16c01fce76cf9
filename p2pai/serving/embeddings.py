"""POST /v1/embeddings and /v1/tokenize."""

from __future__ import annotations

import base64
import math
from typing import Any

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


async def embed(served: ServedModel, request: EmbeddingRequest) -> EmbeddingList:
    texts = await _texts(served, request.input)
    vectors, tokens = await served.engine.embed(texts)
    data = []
    for index, vector in enumerate(vectors):
        if request.dimensions is not None:
            vector = _shorten(vector, request.dimensions)
        data.append(Embedding(index=index, embedding=_encode(vector, request.encoding_format)))
    return EmbeddingList(data=data, model=served.name, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))


async def _texts(served: ServedModel, given: Any) -> list[str]:
    if isinstance(given, str):
        return [given]
    if isinstance(given[0], int):
        return [await served.engine.detokenize(given)]
    if isinstance(given[0], list):
        return [await served.engine.detokenize(tokens) for tokens in given]
    return list(given)


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
