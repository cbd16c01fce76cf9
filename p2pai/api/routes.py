"""Route handlers: parse the body, call the serving layer, serialize the answer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

from aiohttp import web
from pydantic import BaseModel

from ..backends.tasks import Task
from ..protocol.audio import TranscriptionRequest, TranslationRequest
from ..protocol.node import Health, LoadedModel, Readiness, SystemInfo
from ..protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EditRequest,
    EmbeddingRequest,
    ModelList,
    TokenizeRequest,
)
from ..routing.router import FORWARDED
from ..serving import chat, completions, embeddings, transcription
from ..serving.context import ServedModel
from ..serving.limits import MAX_AUDIO_BYTES
from ..serving.manager import UnknownModelError
from ..serving.transcription import AudioRequest
from .errors import APIError
from .multipart import parse_form
from .replies import json_reply
from .sse import OPENAI, StreamFormat, send_stream
from .state import NodeState

R = TypeVar("R", bound=BaseModel)


class ForModel(Protocol):
    """A request body that names the model to answer it (None: the node's default)."""

    @property
    def model(self) -> str | None: ...


class Streamable(ForModel, Protocol):
    """A request body whose answer may be streamed."""

    @property
    def stream(self) -> bool: ...


B = TypeVar("B", bound=ForModel)
S = TypeVar("S", bound=Streamable)

routes = web.RouteTableDef()


async def parse_body(request: web.Request, model: type[R]) -> R:
    return model.model_validate_json(await request.read(), strict=True)


def served_headers(served: ServedModel, state: NodeState) -> dict[str, str]:
    return {"X-P2PAI-Served-By": state.node_id, "X-P2PAI-Model": served.name}


async def stream_or_json(
    request: web.Request,
    served: ServedModel,
    wants_stream: bool,
    whole: Callable[[], Awaitable[BaseModel]],
    parts: Callable[[], AsyncIterator[BaseModel]],
    form: StreamFormat = OPENAI,
) -> web.StreamResponse:
    state = NodeState.of(request)
    headers = served_headers(served, state)
    if not wants_stream:
        return json_reply(await whole(), headers=headers)
    events = parts()
    first = await anext(events)  # errors before the first event still get their own status
    return await send_stream(request, first, events, headers, form)


async def dispatch(request: web.Request, model: str | None, task: Task | None,
                   local: Callable[[], Awaitable[web.StreamResponse]], pin: str | None = None) -> web.StreamResponse:
    """Answer here or through the peer the router picks among those whose model serves ``task``
    (on node ``pin`` if given)."""
    router = NodeState.of(request).router
    if router is None:
        return await local()
    return await router.dispatch(request, model, task, local, pin)


async def answer_json(request: web.Request, task: Task | None, serve: Callable[[ServedModel, B], Awaitable[BaseModel]],
                      body: B) -> web.StreamResponse:
    """Answer ``body`` with a JSON (never streamed) response, here or on the peer the router picks among
    those whose model serves ``task`` (None: any model with a tokenizer)."""

    async def local() -> web.StreamResponse:
        state = NodeState.of(request)
        served = await state.serving.model(body.model, task)
        return json_reply(await serve(served, body), headers=served_headers(served, state))

    return await dispatch(request, body.model, task, local)


async def answer_streamable(
    request: web.Request,
    task: Task,
    whole: Callable[[ServedModel, S], Awaitable[BaseModel]],
    parts: Callable[[ServedModel, S], AsyncIterator[BaseModel]],
    body: S,
    form: StreamFormat = OPENAI,
) -> web.StreamResponse:
    """Answer ``body`` whole as JSON, or streamed in ``form`` when it asks for a stream, here or on the
    peer the router picks among those whose model serves ``task``."""

    async def local() -> web.StreamResponse:
        served = await NodeState.of(request).serving.model(body.model, task)
        return await stream_or_json(request, served, body.stream, lambda: whole(served, body),
                                    lambda: parts(served, body), form)

    return await dispatch(request, body.model, task, local)


@routes.post("/v1/chat/completions")
@routes.post("/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, ChatCompletionRequest)
    return await answer_streamable(request, "chat", chat.complete, chat.stream, body)


@routes.post("/v1/completions")
@routes.post("/completions")
async def text_completions(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, CompletionRequest)
    return await answer_streamable(request, "completion", completions.complete, completions.stream, body)


@routes.post("/v1/edits")
@routes.post("/edits")
async def edits(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, EditRequest)
    return await answer_json(request, "completion", completions.edit, body)


@routes.post("/v1/embeddings")
@routes.post("/embeddings")
async def create_embeddings(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, EmbeddingRequest)
    return await answer_json(request, "embeddings", embeddings.embed, body)


@routes.post("/v1/tokenize")
async def tokenize(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, TokenizeRequest)
    return await answer_json(request, None, embeddings.tokenize, body)  # any model with a tokenizer


@routes.post("/v1/audio/transcriptions")
@routes.post("/audio/transcriptions")
async def audio_transcriptions(request: web.Request) -> web.StreamResponse:
    return await _audio(request, TranscriptionRequest, "transcription")


@routes.post("/v1/audio/translations")
@routes.post("/audio/translations")
async def audio_translations(request: web.Request) -> web.StreamResponse:
    return await _audio(request, TranslationRequest, "translation")


async def _audio(request: web.Request, form_model: type[AudioRequest], task: Task) -> web.StreamResponse:
    """A multipart upload: read whole (its size is bounded by the app), parsed, then served here or
    forwarded as the same bytes to a node whose model serves ``task``."""
    form = parse_form(request.headers.get("Content-Type"), await request.read())
    upload = form.files.get("file")
    if upload is None or set(form.files) != {"file"} or "file" in form.fields:
        raise APIError(400, "The form needs the audio as one uploaded file named `file`", code="invalid_form",
                       param="file")
    if len(upload.data) > MAX_AUDIO_BYTES:
        raise APIError(413, f"The audio file is larger than {MAX_AUDIO_BYTES // (1024 * 1024)} MiB",
                       code="request_too_large", param="file")
    body = form_model.model_validate({**form.fields, "file": upload.data})

    async def local() -> web.StreamResponse:
        state = NodeState.of(request)
        served = await state.serving.model(body.model, task)
        headers = served_headers(served, state)
        if body.stream:
            events = await transcription.stream(served, body)
            return await send_stream(request, await anext(events), events, headers)
        answer = await transcription.transcribe(served, body)
        if isinstance(answer, str):
            return web.Response(text=answer, content_type="text/plain", headers=headers)
        return json_reply(answer, headers=headers)

    return await dispatch(request, body.model, task, local)


@routes.get("/v1/models")
@routes.get("/models")
async def list_models(request: web.Request) -> web.Response:
    """Every model of the swarm, once (this node's own when asked by a peer)."""
    state = NodeState.of(request)
    return json_reply(ModelList(data=state.model_cards(swarm_wide=FORWARDED not in request)))


@routes.get("/v1/models/{model}")
@routes.get("/models/{model}")
async def get_model(request: web.Request) -> web.Response:
    state = NodeState.of(request)
    name = request.match_info["model"]
    for card in state.model_cards(swarm_wide=FORWARDED not in request):
        if card.id == name:
            return json_reply(card)
    raise UnknownModelError(name)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_reply(Health())


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready once the node can answer: preloading done (if asked) and a model here or a swarm to ask."""
    state = NodeState.of(request)
    ready = state.ready and (bool(state.manager.names()) or state.router is not None)
    return json_reply(Readiness(status="ready" if ready else "starting"), status=200 if ready else 503)


@routes.get("/system")
async def system(request: web.Request) -> web.Response:
    """LocalAI's /system: available backends and loaded models, plus per-model load figures."""
    state = NodeState.of(request)
    return json_reply(SystemInfo(
        backends=state.backends,
        loaded_models=[_loaded(state, name) for name in state.manager.loaded()],
        version=state.version,
        node_id=state.node_id,
        devices=state.manager.devices,
    ))


def _loaded(state: NodeState, name: str) -> LoadedModel:
    stats = state.manager.stats(name)
    return LoadedModel(id=name, in_flight=stats.in_flight, queued=stats.queued, slots=stats.slots,
                       decode_tps=stats.decode_tps, crashes=stats.crashes, last_crash=stats.last_crash, pid=stats.pid,
                       providers=list(stats.providers))
