"""POST /v1/embeddings and /v1/tokenize."""

from __future__ import annotations

import base64

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
from .validation import check_count, check_text_lengths, check_token_prompt


async def embed(served: ServedModel, request: EmbeddingRequest) -> EmbeddingList:
    texts = await _texts(served, request.input)
    check_text_lengths(texts, served.engine.info.max_input_chars, "input")
    vectors, tokens = await served.engine.embed(texts)
    served.count_input(tokens)
    if request.dimensions is not None:
        vectors = _shorten(vectors, request.dimensions)
    data = [Embedding(index=index, embedding=_encode(vector, request.encoding_format))
            for index, vector in enumerate(vectors)]
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


def _shorten(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """OpenAI's `dimensions`: keep the first N components of each vector and renormalise."""
    if dimensions > vectors.shape[1]:
        raise InvalidRequestError(
            f"dimensions is {dimensions} but the model's embeddings have {vectors.shape[1]}", param="dimensions"
        )
    head = vectors[:, :dimensions]
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    return head / np.where(norms > 0, norms, 1.0)


def _encode(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


async def tokenize(served: ServedModel, request: TokenizeRequest) -> Tokens:
    return Tokens(tokens=await served.engine.tokenize(request.text(), request.add_special))
