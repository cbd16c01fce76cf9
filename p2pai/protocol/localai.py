"""LocalAI's extensions: POST /v1/rerank in its Jina-compatible shape."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from ..serving.limits import MAX_MODEL_NAME
from .openai import INTEGRAL


class RerankRequest(BaseModel):
    """How many documents one request may carry is a node setting (Limits.max_documents)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: Annotated[str, Field(max_length=MAX_MODEL_NAME)] | None = None
    query: Annotated[str, Field(min_length=1)]
    documents: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    top_n: Annotated[int, Field(ge=1), INTEGRAL] | None = None
    """The best N results; more than there are documents means all of them."""
    return_documents: bool = True
    """Jina's and Cohere's option: false leaves each result's `document` out."""


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    """The document's position in the request."""
    document: RerankDocument | None = Field(default=None, exclude_if=lambda value: value is None)
    relevance_score: float
    """The cross-encoder's logit through a sigmoid: in [0, 1], higher is more relevant."""


class RerankUsage(BaseModel):
    total_tokens: int
    prompt_tokens: int


class RerankResponse(BaseModel):
    model: str
    usage: RerankUsage
    results: list[RerankResult]
    """Most relevant first."""
