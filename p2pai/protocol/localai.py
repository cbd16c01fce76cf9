"""LocalAI's extensions: POST /v1/rerank in its Jina-compatible shape."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, RootModel

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


class TraceHop(BaseModel):
    """One node a forwarded request was tried on (our extension of LocalAI's trace)."""

    node: str
    name: str
    via: str
    """"local", "direct" (HTTPS to the node's peer endpoint) or "tunnel" (over libp2p)."""
    status: int | None
    upstream_ms: float | None
    error: str
    continuation: bool


class TraceRequest(BaseModel):
    method: str
    path: str
    headers: dict[str, list[str]] | None
    """Secrets (API keys, cookies, peer signatures) redacted."""
    body: str | None
    """Base64, as LocalAI's []byte; only with --trace-bodies (and `full=true` in a list)."""
    body_truncated: bool = False
    body_bytes: int = 0


class TraceResponse(BaseModel):
    status: int
    headers: dict[str, list[str]] | None
    body: str | None
    body_truncated: bool = False
    body_bytes: int = 0


class APIExchange(BaseModel):
    """One request as LocalAI's GET /api/traces lists it, plus who served it and through which hops."""

    id: str
    timestamp: str
    """RFC 3339, UTC."""
    duration: int
    """Nanoseconds (Go's time.Duration), to the end of the answer (of the stream, for a stream)."""
    request: TraceRequest
    response: TraceResponse
    error: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    served_by: str | None
    """The node that answered (X-P2PAI-Served-By)."""
    forwarded_by: str | None
    """The entry node, when this node served a request a peer forwarded to it."""
    hops: list[TraceHop]
    """The nodes this node tried, in order (empty when it did not route the request)."""


class TraceList(RootModel[list[APIExchange]]):
    """Newest first; the total is in X-Total-Count."""
