"""LocalAI's extensions: POST /v1/rerank in its Jina-compatible shape; its model management
(`/models/*`: galleries, apply, jobs, delete) and Jan's model download and delete answers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

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


class Gallery(BaseModel):
    """config.Gallery: a gallery index by name and location (a path or an HTTP(S) URL)."""

    name: str
    url: str


class GalleryFile(BaseModel):
    """gallery.File: one file of a model, checked against its SHA-256."""

    model_config = ConfigDict(extra="ignore")

    filename: str = Field(min_length=1, max_length=255)
    sha256: str = ""
    uri: str = ""


class GalleryMetadata(BaseModel):
    """gallery.Metadata: what a gallery index says of one model (models/gallery.py reads the rest)."""

    name: str
    description: str = ""
    license: str = ""
    urls: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    icon: str = ""
    url: str = ""
    """A model definition (YAML with `config_file` and `files`) this entry starts from."""
    files: list[GalleryFile] = Field(default_factory=list)


class GalleryModel(GalleryMetadata):
    """One entry of GET /models/available: the gallery's metadata plus its `id` for /models/apply."""

    id: str
    """`gallery@name`."""
    gallery: Gallery
    installed: bool


class GalleryList(RootModel[list[Gallery]]):
    """GET /models/galleries."""


class AvailableModels(RootModel[list[GalleryModel]]):
    """GET /models/available."""


class ApplyRequest(BaseModel):
    """localai.GalleryModel as POST /models/apply takes it: which model (`id` from a gallery, `url` of a
    model definition, or `name`: a gallery's, else the swarm's), optional `files` and config `overrides`."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = Field(default=None, max_length=512)
    url: str | None = Field(default=None, max_length=4096)
    name: str | None = Field(default=None, max_length=128)
    """With `id` or `url`: the name to install the model under."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    files: list[GalleryFile] = Field(default_factory=list, max_length=16)


class ApplyResponse(BaseModel):
    """schema.GalleryResponse: the job's id and where to follow it."""

    uuid: str
    status: str
    """The URL of the job's status (GET /models/jobs/{uuid})."""


class JobStatus(BaseModel):
    """galleryop.OpStatus: a model job's progress (sizes as text, as LocalAI gives them), plus exact figures."""

    processed: bool = False
    progress: float = 0.0
    """Percent."""
    message: str = ""
    file_name: str = ""
    file_size: str = ""
    downloaded_size: str = ""
    error: str | None = None
    cancelled: bool = False
    cancellable: bool = False
    deletion: bool = False
    gallery_element_name: str = ""
    model: str = ""
    """The name the model is (or will be) served under."""
    total_bytes: int = 0
    downloaded_bytes: int = 0
    resumed_bytes: int = 0
    """Of downloaded_bytes, those already verified on disk from an earlier, interrupted attempt."""
    bytes_per_second: float = 0.0
    corrupt_chunks: int = 0
    """Chunks that arrived with the wrong hash and were fetched again."""
    sources: list[str] = Field(default_factory=list)
    """Where the file is being fetched from: peer names, URLs or the built-in package."""


class JobList(RootModel[dict[str, JobStatus]]):
    """GET /models/jobs: every job by uuid."""


class DeletedModel(BaseModel):
    """Jan's (and OpenAI's) DeleteModelResponse."""

    id: str
    object: Literal["model"] = "model"
    deleted: bool


class ModelDownload(BaseModel):
    """Jan's DownloadModelResponse, plus the job that follows the download."""

    id: str
    object: Literal["model"] = "model"
    state: Literal["downloading", "downloaded"]
    job: str | None = None
    """The uuid of the job (GET /models/jobs/{uuid}); None when the model was already there."""


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
