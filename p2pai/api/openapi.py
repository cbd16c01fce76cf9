"""GET /openapi.json: OpenAPI 3.1 documents of the client API and of the peer endpoint, from the protocol models.

Each operation is declared once below (its paths, request model, answer model,
stream event model, errors); the JSON schemas come from the pydantic models, so
the documents describe what the handlers actually parse and send. The peer
document has the same operations minus the client-only ones, each with the
signature headers of routing/peer_auth.py as required header parameters.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from ..protocol import anthropic, responses
from ..protocol.audio import (
    TranscriptionAnswer,
    TranscriptionRequest,
    TranscriptTextDelta,
    TranslationAnswer,
    TranslationRequest,
)
from ..protocol.errors import ErrorResponse
from ..protocol.figures import ModelFigures
from ..protocol.localai import (
    ApplyRequest,
    ApplyResponse,
    AvailableModels,
    DeletedModel,
    GalleryList,
    JobList,
    JobStatus,
    ModelDownload,
    RerankRequest,
    RerankResponse,
    TraceList,
)
from ..protocol.node import Health, Readiness, SystemInfo
from ..protocol.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    Edit,
    EditRequest,
    EmbeddingList,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
    Tokens,
)
from ..protocol.p2p import P2PNodesResponse
from ..protocol.pull import SharedModel
from ..routing import peer_auth
from ..routing.router import PIN_HEADER

Document = Literal["client", "peer"]
_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    method: Literal["get", "post", "delete"]
    paths: tuple[str, ...]
    """The first is the documented one; the others are aliases (OpenAI clients use both)."""
    id: str
    summary: str
    answer: type[BaseModel] | None
    """The JSON body of a 200 (None: see `text`)."""
    request: type[BaseModel] | None = None
    stream: type[BaseModel] | None = None
    """The event of the text/event-stream answer sent when the request sets `stream`."""
    errors: tuple[int, ...] = ()
    text: tuple[str, ...] = ()
    """The media types of a text answer (beside the JSON one, if any)."""
    form: bool = False
    """The request is a multipart/form-data upload (its model's bytes fields are files)."""
    binary: bool = False
    """An application/octet-stream answer."""
    empty: bool = False
    """Answered 204 with no body."""
    routed: bool = False
    """Answered by the node the router picks (X-P2PAI-Node may pin one)."""
    peer: bool = True
    """Also served on the peer endpoint."""
    client: bool = True
    """Served on the client API (False: on the peer endpoint only)."""
    public: bool = False
    """No API key needed."""
    error: type[BaseModel] = ErrorResponse
    """The shape of its errors (Anthropic's on Anthropic's paths)."""
    named_events: bool = False
    """Its stream's events have an `event:` line and end with the last one, not [DONE]."""
    query: tuple[dict[str, Any], ...] = ()
    """Its query parameters (OpenAPI parameter objects)."""


_MODEL_ERRORS = (400, 404, 413, 500, 502, 503)


_COUNT = {"type": "integer", "minimum": 0}
_INTEGER = {"type": "integer"}
_BOOLEAN = {"type": "boolean"}


def _query(required: bool = False, **schemas: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """Query parameters (OpenAPI parameter objects) by name and JSON schema."""
    return tuple({"name": name, "in": "query", "required": required, "schema": dict(schema)}
                 for name, schema in schemas.items())


OPERATIONS = (
    Operation("post", ("/v1/chat/completions", "/chat/completions"), "createChatCompletion",
              "Chat completion (OpenAI), streamed as server-sent events with `stream`", ChatCompletion,
              ChatCompletionRequest, ChatCompletionChunk, _MODEL_ERRORS, routed=True),
    Operation("post", ("/v1/completions", "/completions"), "createCompletion",
              "Text completion (OpenAI legacy), streamed as server-sent events with `stream`", Completion,
              CompletionRequest, Completion, _MODEL_ERRORS, routed=True),
    Operation("post", ("/v1/edits", "/edits"), "createEdit", "Edit (OpenAI legacy)", Edit, EditRequest,
              errors=_MODEL_ERRORS, routed=True),
    Operation("post", ("/v1/embeddings", "/embeddings"), "createEmbedding", "Embeddings", EmbeddingList,
              EmbeddingRequest, errors=_MODEL_ERRORS, routed=True),
    Operation("post", ("/v1/rerank", "/rerank"), "rerank",
              "Documents ranked by relevance to a query by a cross-encoder (LocalAI's, Jina-compatible)",
              RerankResponse, RerankRequest, errors=_MODEL_ERRORS, routed=True),
    Operation("post", ("/v1/audio/transcriptions", "/audio/transcriptions"), "createTranscription",
              "Speech to text (OpenAI): json or verbose_json, or text, srt, vtt as text/plain; with `stream`, "
              "a server-sent event per decoded segment, then the whole text", TranscriptionAnswer,
              TranscriptionRequest, TranscriptTextDelta, _MODEL_ERRORS, text=("text/plain",), form=True, routed=True),
    Operation("post", ("/v1/audio/translations", "/audio/translations"), "createTranslation",
              "Speech in any language to English text (OpenAI)", TranslationAnswer, TranslationRequest,
              TranscriptTextDelta, _MODEL_ERRORS, text=("text/plain",), form=True, routed=True),
    Operation("post", ("/v1/tokenize",), "tokenize", "Tokenize text with a model's tokenizer", Tokens,
              TokenizeRequest, errors=_MODEL_ERRORS, routed=True),
    Operation("post", ("/v1/messages", "/messages"), "createMessage",
              "Message (Anthropic's Messages API), streamed as Anthropic's events with `stream`", anthropic.Message,
              anthropic.MessagesRequest, anthropic.AnthropicStreamEvent, _MODEL_ERRORS, routed=True,
              error=anthropic.ErrorResponse, named_events=True),
    Operation("post", ("/v1/messages/count_tokens", "/messages/count_tokens"), "countMessageTokens",
              "The tokens a Messages request's prompt takes (Anthropic)", anthropic.TokenCount,
              anthropic.CountTokensRequest, errors=_MODEL_ERRORS, routed=True, error=anthropic.ErrorResponse),
    Operation("post", ("/v1/responses", "/responses"), "createResponse",
              "Response (OpenAI's Responses API), stored by default; streamed as its events with `stream`",
              responses.Response, responses.ResponsesRequest, responses.ResponseStreamEvent, _MODEL_ERRORS,
              routed=True, named_events=True),
    Operation("get", ("/v1/responses/{id}", "/responses/{id}"), "retrieveResponse",
              "A stored (or running) response, from the node that has it; with `stream=true` its events again, "
              "after `starting_after`", responses.Response, None, responses.ResponseStreamEvent, (400, 404),
              named_events=True, query=_query(stream=_BOOLEAN, starting_after=_INTEGER)),
    Operation("post", ("/v1/responses/{id}/cancel", "/responses/{id}/cancel"), "cancelResponse",
              "Cancel a background response", responses.Response, errors=(400, 404)),
    Operation("delete", ("/v1/responses/{id}", "/responses/{id}"), "deleteResponse", "Delete a stored response",
              responses.Deleted, errors=(404,)),
    Operation("get", ("/v1/models", "/models"), "listModels", "Every model of the swarm", ModelList),
    Operation("get", ("/v1/models/{model}", "/models/{model}"), "retrieveModel", "One model of the swarm",
              ModelCard, errors=(404,)),
    Operation("get", ("/healthz",), "health", "The node is up", Health, public=True),
    Operation("get", ("/readyz",), "readiness", "The node can answer (503 while starting)", Readiness,
              errors=(503,), public=True),
    Operation("get", ("/system",), "system", "Backends and loaded models (LocalAI)", SystemInfo),
    Operation("get", ("/api/p2p",), "swarmNodes", "The swarm (LocalAI's P2PNodesResponse)", P2PNodesResponse,
              errors=(503,), peer=False),
    Operation("get", ("/api/p2p/token",), "swarmToken",
              "The swarm token: to callers with an API key, or on this machine when the node has none", None,
              errors=(403, 503), text=("text/plain",), peer=False),
    Operation("get", ("/models/galleries",), "listGalleries", "Model galleries (LocalAI)", GalleryList, peer=False),
    Operation("get", ("/models/available",), "listAvailableModels",
              "Every gallery's models, marked installed when served here (LocalAI)", AvailableModels,
              errors=(400,), peer=False),
    Operation("post", ("/models/apply",), "applyModel",
              "Install a model from a gallery (`id`), a model definition (`url`) or the swarm (`name`): a job "
              "(LocalAI)", ApplyResponse, ApplyRequest, errors=(400, 404, 409), peer=False),
    Operation("get", ("/models/jobs",), "listModelJobs", "Every model job by uuid (LocalAI)", JobList, peer=False),
    Operation("get", ("/models/jobs/{uuid}",), "getModelJob", "A model job's progress (LocalAI)", JobStatus,
              errors=(404,), peer=False),
    Operation("post", ("/models/delete/{name}",), "deleteModelJob", "Delete a model and its file (LocalAI)",
              ApplyResponse, errors=(404, 409), peer=False),
    Operation("delete", ("/v1/models/{model}",), "deleteModel", "Delete a model and its file (Jan, OpenAI)",
              DeletedModel, errors=(404, 409), peer=False),
    Operation("get", ("/v1/models/download/{model}",), "downloadModel",
              "Install a model from a gallery or the swarm (Jan)", ModelDownload, errors=(400, 404, 409), peer=False),
    Operation("post", ("/v1/models/download/{model}",), "downloadModelPost", "The same, as Jan's example sends it",
              ModelDownload, errors=(400, 404, 409), peer=False),
    Operation("get", ("/p2p/files/{sha256}",), "fileRange",
              "`length` bytes from `offset` of a model file this node announces (at most 64 MiB)", None,
              errors=(400, 404, 416), binary=True, query=_query(required=True, offset=_COUNT, length=_COUNT),
              client=False),
    Operation("get", ("/p2p/files/{sha256}/chunks",), "fileChunkHashes",
              "The file's chunk hashes, 32 bytes each, whose SHA-256 is the announced root", None, errors=(404,),
              binary=True, client=False),
    Operation("get", ("/p2p/figures",), "modelFigures",
              "This node's current figures for one of its models, which an entry node of a large swarm asks for "
              "before sending it a request", ModelFigures, errors=(404,), client=False,
              query=({"name": "model", "in": "query", "required": True, "schema": {"type": "string"}},)),
    Operation("get", ("/p2p/models/{name}",), "sharedModel", "A model's config and file, for a peer installing it",
              SharedModel, errors=(404,), client=False),
    Operation("get", ("/metrics",), "metrics", "Prometheus metrics of this node (text format 0.0.4)", None,
              text=("text/plain",), peer=False),
    Operation("get", ("/api/traces",), "listTraces",
              "The last requests this node handled, newest first, with their hops (LocalAI's shape: at most "
              "`limit`, default 50, 0 for all, after `offset`; bodies with `full`; the total in X-Total-Count; "
              "admin only when keys are set)", TraceList, errors=(403,), peer=False,
              query=_query(limit=_COUNT, offset=_COUNT, full=_BOOLEAN)),
    Operation("post", ("/api/traces/clear",), "clearTraces", "Forget the traces (admin only when keys are set)",
              None, errors=(403,), empty=True, peer=False),
    Operation("get", ("/",), "dashboard", "The web dashboard", None, text=("text/html",), peer=False, public=True),
    Operation("get", ("/dashboard/{name}",), "dashboardAsset", "A script or style sheet of the dashboard", None,
              errors=(404,), text=("text/javascript", "text/css"), peer=False, public=True),
    Operation("get", ("/openapi.json",), "openapi", "This document", None),
)


def document(kind: Document) -> dict[str, Any]:
    return json.loads(_document_bytes(kind))


@functools.cache
def _document_bytes(kind: Document) -> bytes:
    operations = [op for op in OPERATIONS if (op.client if kind == "client" else op.peer)]
    refs, schemas = _schemas(operations)
    paths: dict[str, Any] = {}
    for op in operations:
        for number, path in enumerate(op.paths):
            item = paths.setdefault(path, {})
            if "{" in path:
                item["parameters"] = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                                      for name in re.findall(r"\{(\w+)\}", path)]
            item[op.method] = _operation(op, kind, refs, alias=number > 0)
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "p2pai " + ("client API" if kind == "client" else "peer endpoint"),
            "version": __version__,
            "description": _DESCRIPTIONS[kind],
        },
        "paths": paths,
        "components": {"schemas": schemas, **({"securitySchemes": _SECURITY} if kind == "client" else {})},
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


Mode = Literal["validation", "serialization"]
Refs = dict[Any, Any]
"""(model, mode) -> the model's {"$ref": ...}."""


def _schemas(operations: list[Operation]) -> tuple[Refs, dict[str, Any]]:
    """Requests as they validate, answers as they serialize: each model's $ref, and every schema once."""
    wanted: list[tuple[type[BaseModel], Mode]] = [(ErrorResponse, "serialization")]
    for op in operations:
        wanted += [(model, "serialization") for model in (op.answer, op.stream, op.error) if model is not None]
        if op.request is not None:
            wanted.append((op.request, "validation"))
    refs, top = models_json_schema(list(dict.fromkeys(wanted)), ref_template=_REF)
    return refs, dict(sorted(top.get("$defs", {}).items()))


def _operation(op: Operation, kind: Document, refs: Refs, alias: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.id + ("Alias" if alias else ""), "summary": op.summary}
    if alias:
        out["description"] = f"The same as {op.paths[0]}."
    parameters = [*_PEER_HEADERS, *op.query] if kind == "peer" else [*op.query]
    if op.routed and kind == "client":
        parameters.append({"name": PIN_HEADER, "in": "header", "required": False, "schema": {"type": "string"},
                           "description": "Pin the request to this node (id or name)."})
    if parameters:
        out["parameters"] = parameters
    if op.request is not None:
        media = "multipart/form-data" if op.form else "application/json"
        out["requestBody"] = {"required": True, "content": {media: {"schema": refs[(op.request, "validation")]}}}
    success = {"204": {"description": "Done"}} if op.empty else {"200": _answer(op, refs)}
    out["responses"] = {**success, **_errors(op, kind, refs)}
    if kind == "client":
        out["security"] = [{}] if op.public else _OPTIONAL_KEY
    return out


def _answer(op: Operation, refs: Refs) -> dict[str, Any]:
    if op.binary:
        return {"description": "OK", "content": {"application/octet-stream": {
            "schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}}
    if op.answer is None and not op.text:  # this document
        return {"description": "OpenAPI 3.1 document", "content": {"application/json": {"schema": {"type": "object"}}}}
    content: dict[str, Any] = {}
    if op.answer is not None:
        content["application/json"] = {"schema": refs[(op.answer, "serialization")]}
    for media in op.text:
        content[media] = {"schema": {"type": "string"}}
    if op.stream is not None:
        event, error = refs[(op.stream, "serialization")], refs[(op.error, "serialization")]
        schema = _named_event_schema(event) if op.named_events else _event_schema(event, error)
        content["text/event-stream"] = {"schema": schema}
    return {"description": "OK", "content": content}


def _named_event_schema(event: dict[str, Any]) -> dict[str, Any]:
    """One event of Anthropic's or the Responses API's streams: an `event:` line with its type, then its data
    (the family's error event included); the last event ends the stream."""
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "description": "The data's `type`."},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": event},
        },
        "description": "With `stream` set, the answer is a stream of these events, in the family's documented order.",
    }


def _event_schema(event: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
    """One server-sent event (OpenAPI 3.1 has `schema` describe each event of a stream): its data is an
    event model as JSON, an ErrorResponse when generation failed after the stream began, or [DONE]."""
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {"anyOf": [
                {"const": "[DONE]"},
                {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"anyOf": [event, error]}},
            ]},
        },
        "description": "With `stream` set, the answer is a stream of these events, ending with [DONE].",
    }


_ERROR_TEXT = {
    400: "Invalid request (OpenAI's error shape, `param` names the field)",
    401: "Missing or wrong API key",
    403: "Forbidden",
    404: "No such model (model_not_found), pinned node (node_not_found), response (response_not_found), job or file",
    409: "A model of that name exists, or it cannot be deleted (built in, given with --model)",
    413: "Body larger than 16 MiB (an uploaded audio file: 25 MiB)",
    416: "The range is not within the file",
    500: "The model could not be loaded, or its process died of this request (model_crashed)",
    502: "An RPC worker of the model was lost",
    503: "Overloaded or no node available: retry after Retry-After seconds",
}


def _errors(op: Operation, kind: Document, refs: Refs) -> dict[str, Any]:
    codes = sorted({*op.errors, *(() if op.public and kind == "client" else (401,))})
    error = {"application/json": {"schema": refs[(op.error, "serialization")]}}
    out = {str(code): {"description": _ERROR_TEXT[code], "content": error} for code in codes}
    out["4XX"] = {"description": "Any other client error", "content": error}
    out["5XX"] = {"description": "Any other server error", "content": error}
    return out


_SECURITY = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API key of the node (--api-key)."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
_OPTIONAL_KEY: list[dict[str, list[str]]] = [{}, {"bearer": []}, {"apiKey": []}]
"""A key is needed only when the node was started with --api-key."""

_PEER_HEADER_DESCRIPTIONS = {
    peer_auth.PEER: "The sending node's peer id.",
    peer_auth.DESTINATION: "The peer id of the node the request is signed for (this one).",
    peer_auth.TIMESTAMP: f"Unix time of sending, within {peer_auth.MAX_SKEW:.0f} s of the receiver's clock.",
    peer_auth.NONCE: "Random, never reused.",
    peer_auth.BODY_DIGEST: "SHA-256 of the body, hex.",
    peer_auth.SIGNATURE: "HMAC-SHA256 with the swarm's HTTP key over method, path, body digest, timestamp, "
                         "nonce, sender and destination (routing/peer_auth.py).",
}
_PEER_HEADERS = [{"name": name, "in": "header", "required": True, "schema": {"type": "string"},
                  "description": _PEER_HEADER_DESCRIPTIONS[name]} for name in peer_auth.SIGNED_HEADERS]

_DESCRIPTIONS = {
    "client": "OpenAI-compatible API of a p2pai node, with LocalAI's extensions and Anthropic's Messages API. "
              "Errors are OpenAI's JSON ({\"error\": {\"message\", \"type\", \"param\", \"code\"}}), "
              "Anthropic's on /v1/messages. Request bounds: README.md, Limits.",
    "peer": "The endpoint nodes of one swarm send each other requests on: the client API's model operations, "
            "answered by this node only, and the model files it announces, for requests signed with the swarm's "
            "key.",
}


def handler(kind: Document) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET /openapi.json of the client app or of the peer app."""

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=_document_bytes(kind), content_type="application/json")

    return openapi
