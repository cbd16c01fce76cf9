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
from ..protocol.errors import ErrorResponse
from ..protocol.localai import RerankRequest, RerankResponse, TraceList
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
from ..routing import peer_auth
from ..routing.router import PIN_HEADER

Document = Literal["client", "peer"]
_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    method: Literal["get", "post"]
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
    """The media types of an answer that is not JSON."""
    query: tuple[tuple[str, str], ...] = ()
    """Query parameters: (name, JSON schema type)."""
    empty: bool = False
    """Answered 204 with no body."""
    routed: bool = False
    """Answered by the node the router picks (X-P2PAI-Node may pin one)."""
    peer: bool = True
    """Also served on the peer endpoint."""
    public: bool = False
    """No API key needed."""


_MODEL_ERRORS = (400, 404, 413, 500, 502, 503)
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
    Operation("post", ("/v1/tokenize",), "tokenize", "Tokenize text with a model's tokenizer", Tokens,
              TokenizeRequest, errors=_MODEL_ERRORS, routed=True),
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
    Operation("get", ("/metrics",), "metrics", "Prometheus metrics of this node (text format 0.0.4)", None,
              text=("text/plain",), peer=False),
    Operation("get", ("/api/traces",), "listTraces",
              "The last requests this node handled, newest first, with their hops (LocalAI's shape: at most "
              "`limit`, default 50, 0 for all, after `offset`; bodies with `full`; the total in X-Total-Count; "
              "admin only when keys are set)", TraceList, errors=(403,), peer=False,
              query=(("limit", "integer"), ("offset", "integer"), ("full", "boolean"))),
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
    operations = [op for op in OPERATIONS if kind == "client" or op.peer]
    refs, schemas = _schemas(operations)
    paths: dict[str, Any] = {}
    for op in operations:
        for number, path in enumerate(op.paths):
            item = paths.setdefault(path, {})
            for name in re.findall(r"\{(\w+)\}", path):
                item["parameters"] = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}]
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
        wanted += [(model, "serialization") for model in (op.answer, op.stream) if model is not None]
        if op.request is not None:
            wanted.append((op.request, "validation"))
    refs, top = models_json_schema(list(dict.fromkeys(wanted)), ref_template=_REF)
    return refs, dict(sorted(top.get("$defs", {}).items()))


def _operation(op: Operation, kind: Document, refs: Refs, alias: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.id + ("Alias" if alias else ""), "summary": op.summary}
    if alias:
        out["description"] = f"The same as {op.paths[0]}."
    parameters = [*_PEER_HEADERS] if kind == "peer" else []
    parameters += [{"name": name, "in": "query", "required": False, "schema": {"type": type_, "minimum": 0}
                    if type_ == "integer" else {"type": type_}} for name, type_ in op.query]
    if op.routed and kind == "client":
        parameters.append({"name": PIN_HEADER, "in": "header", "required": False, "schema": {"type": "string"},
                           "description": "Pin the request to this node (id or name)."})
    if parameters:
        out["parameters"] = parameters
    if op.request is not None:
        out["requestBody"] = {"required": True,
                              "content": {"application/json": {"schema": refs[(op.request, "validation")]}}}
    success = {"204": {"description": "Done"}} if op.empty else {"200": _answer(op, refs)}
    out["responses"] = {**success, **_errors(op, kind, refs)}
    if kind == "client":
        out["security"] = [{}] if op.public else _OPTIONAL_KEY
    return out


def _answer(op: Operation, refs: Refs) -> dict[str, Any]:
    if op.text:
        return {"description": "OK", "content": {media: {"schema": {"type": "string"}} for media in op.text}}
    if op.answer is None:  # this document
        return {"description": "OpenAPI 3.1 document", "content": {"application/json": {"schema": {"type": "object"}}}}
    content: dict[str, Any] = {"application/json": {"schema": refs[(op.answer, "serialization")]}}
    if op.stream is not None:
        content["text/event-stream"] = {"schema": _event_schema(refs[(op.stream, "serialization")],
                                                                refs[(ErrorResponse, "serialization")])}
    return {"description": "OK", "content": content}


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
    404: "No such model (model_not_found) or pinned node (node_not_found)",
    413: "Body larger than 16 MiB",
    500: "The model could not be loaded, or its process died of this request (model_crashed)",
    502: "An RPC worker of the model was lost",
    503: "Overloaded or no node available: retry after Retry-After seconds",
}


def _errors(op: Operation, kind: Document, refs: Refs) -> dict[str, Any]:
    codes = sorted({*op.errors, *(() if op.public and kind == "client" else (401,))})
    error = {"application/json": {"schema": refs[(ErrorResponse, "serialization")]}}
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
    "client": "OpenAI-compatible API of a p2pai node, with LocalAI's extensions. Errors are OpenAI's JSON "
              "({\"error\": {\"message\", \"type\", \"param\", \"code\"}}). Request bounds: README.md, Limits.",
    "peer": "The endpoint nodes of one swarm send each other requests on: the client API's model operations, "
            "answered by this node only, for requests signed with the swarm's key.",
}


def handler(kind: Document) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET /openapi.json of the client app or of the peer app."""

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=_document_bytes(kind), content_type="application/json")

    return openapi
