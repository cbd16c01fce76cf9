"""OpenAI's Responses API on the chat serving path, and the node's responses while they run.

A request is mapped to a chat request (instructions, the conversation of `previous_response_id`,
input items, tools, text.format) and one turn is read; every response, streamed or not, is told
as the Responses events in their documented order (response.created, response.in_progress, per
output item: output_item.added, for text content_part.added / output_text.delta... / output_text.done
/ content_part.done, for a call function_call_arguments.delta / .done, then output_item.done; and
last response.completed, .incomplete or .failed), each with its sequence number from 0. The events
are kept with the response: a stored response's stream can be replayed (`starting_after`), a
background one followed while it runs.

A response id names the node that stores it (`resp_` + a tag of the node's id + a random part), so
any node of the swarm can send a GET, cancel or delete to the right one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from pydantic import TypeAdapter

from ..backends.base import InvalidRequestError
from ..protocol import responses as r
from ..protocol.openai import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionDefinition,
    JsonSchemaFormat,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    Tool,
    ToolCall,
)
from ..protocol.openai import FunctionCall as ChatFunctionCall
from ..store import Store
from . import chat
from .chat import Outcome
from .context import ServedModel

log = logging.getLogger(__name__)

TAG_LENGTH = 12
_CONVERSATION = TypeAdapter(list[ChatMessage])
_EVENT: TypeAdapter[r.StreamEvent] = TypeAdapter(r.StreamEvent)


class ResponseNotFound(LookupError):
    def __init__(self, ident: str) -> None:
        super().__init__(f"No response found with id '{ident}'")
        self.ident = ident


def node_tag(node_id: str) -> str:
    """The part of a response id that names the node storing it."""
    return hashlib.sha256(node_id.encode()).hexdigest()[:TAG_LENGTH]


def tag_of(ident: str) -> str | None:
    body = ident.removeprefix("resp_")
    return body[:TAG_LENGTH] if body != ident and len(body) > TAG_LENGTH else None


@dataclass
class Run:
    """One response: its latest state and its events so far; followers wait for more."""

    response: r.Response
    conversation: list[ChatMessage]
    """What the model read (instructions aside); the output is added when it ends."""
    events: list[r.StreamEvent] = field(default_factory=list)
    finished: bool = False
    task: asyncio.Task[None] | None = None
    """The background task generating it (None: the request's own handler does)."""
    error: Exception | None = None
    """What made it fail, for an answer that is not streamed to report with its own status."""
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def emit(self, event: r.StreamEvent) -> r.StreamEvent:
        self.events.append(event)
        self._changed.set()
        return event

    def end(self) -> None:
        self.finished = True
        self._changed.set()

    async def follow(self, after: int = -1) -> AsyncGenerator[r.StreamEvent, None]:
        """Its events from sequence number ``after`` + 1, as they come, until it ends."""
        index = after + 1
        while True:
            while index < len(self.events):
                yield self.events[index]
                index += 1
            if self.finished:
                return
            self._changed.clear()
            await self._changed.wait()


class Responses:
    """This node's responses: running ones in memory, the stored ones in the store."""

    def __init__(self, store: Store | None, node_id: str) -> None:
        self._store = store
        self.tag = node_tag(node_id)
        self._runs: dict[str, Run] = {}
        self._writes: set[asyncio.Task[None]] = set()

    async def recover(self) -> None:
        """At start: responses a stopped (or killed) node left running have failed."""
        if self._store is None:
            return
        for ident, stored in await self._store.responses.unfinished():
            response = r.Response.model_validate_json(stored.response)
            response.status = "failed"
            response.error = r.ResponseError(code="node_stopped", message="the node stopped while it ran")
            await self._store.responses.save(ident, response.model_dump_json(), stored.conversation, stored.events,
                                             finished=True)

    async def close(self) -> None:
        """Cancel the background responses still running, and store them and every finished one."""
        tasks = [run.task for run in self._runs.values() if run.task is not None and not run.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    # Creating

    async def start(self, served: ServedModel, request: r.ResponsesRequest
                    ) -> tuple[Run, AsyncGenerator[r.StreamEvent, None]]:
        """Map, check and start generating; everything that can refuse the request does so here.
        The events are generated as they are read, or in a task of their own for a background response."""
        if request.background and not request.store:
            raise InvalidRequestError("background responses must be stored (store: true)", param="background")
        conversation = await self._history(request.previous_response_id)
        conversation += _input_messages(request.input)
        parts = await chat.turn(served, _chat_request(request, conversation))
        run = Run(_response(self, served.name, request), conversation)
        if request.store:
            self._runs[run.response.id] = run
        events = self._generate(run, parts, request.store)
        if not request.background:
            return run, events
        await self._write(run)  # a crash now leaves it findable, as failed
        run.task = asyncio.create_task(_drain(events), name=f"response-{run.response.id}")
        return run, run.follow()

    async def _history(self, previous: str | None) -> list[ChatMessage]:
        if previous is None:
            return []
        run = self._runs.get(previous)
        if run is not None:
            if not run.finished:
                raise InvalidRequestError(f"the previous response {previous!r} is still in progress",
                                          param="previous_response_id")
            return list(run.conversation)
        stored = await self._store.responses.get(previous) if self._store is not None else None
        if stored is None:
            raise InvalidRequestError(f"Previous response with id '{previous}' not found.",
                                      code="previous_response_not_found", param="previous_response_id")
        return _CONVERSATION.validate_json(stored.conversation)

    async def _generate(self, run: Run, parts: AsyncIterator[str | Outcome], store: bool
                        ) -> AsyncGenerator[r.StreamEvent, None]:
        """Read the turn, telling it as events (each one also kept in ``run``)."""
        response = run.response
        seq = 0

        def emit(event_type: type[r.SequencedEvent], **fields: object) -> r.StreamEvent:
            nonlocal seq
            event = event_type(sequence_number=seq, **fields)
            seq += 1
            return run.emit(event)  # type: ignore[arg-type]

        try:
            response.status = "in_progress"
            yield emit(r.ResponseCreated, response=response.model_copy(deep=True))
            yield emit(r.ResponseInProgress, response=response.model_copy(deep=True))
            message: r.OutputMessage | None = None
            end: Outcome | None = None
            async for part in parts:
                if isinstance(part, Outcome):
                    end = part
                    break
                if message is None:
                    message = r.OutputMessage(id=f"msg_{uuid.uuid4().hex}", status="in_progress", content=[])
                    yield emit(r.OutputItemAdded, output_index=0, item=message.model_copy(deep=True))
                    message.content.append(r.OutputText(text=""))
                    yield emit(r.ContentPartAdded, item_id=message.id, output_index=0, content_index=0,
                               part=r.OutputText(text=""))
                message.content[0].text += part
                yield emit(r.OutputTextDelta, item_id=message.id, output_index=0, content_index=0, delta=part)
            assert end is not None
            incomplete = end.finish_reason == "length"
            if message is not None:
                message.status = "incomplete" if incomplete else "completed"
                text = message.content[0]
                yield emit(r.OutputTextDone, item_id=message.id, output_index=0, content_index=0, text=text.text)
                yield emit(r.ContentPartDone, item_id=message.id, output_index=0, content_index=0, part=text)
                yield emit(r.OutputItemDone, output_index=0, item=message)
                response.output.append(message)
            for call in end.tool_calls:
                index = len(response.output)
                item = r.FunctionCall(id=f"fc_{uuid.uuid4().hex}", call_id=call.id, name=call.function.name,
                                      arguments="", status="in_progress")
                yield emit(r.OutputItemAdded, output_index=index, item=item.model_copy())
                item.arguments, item.status = call.function.arguments, "completed"
                yield emit(r.FunctionCallArgumentsDelta, item_id=item.id, output_index=index, delta=item.arguments)
                yield emit(r.FunctionCallArgumentsDone, item_id=item.id, output_index=index, name=item.name,
                           arguments=item.arguments)
                yield emit(r.OutputItemDone, output_index=index, item=item)
                response.output.append(item)
            usage = end.usage
            response.usage = r.ResponseUsage(
                input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                input_tokens_details=r.InputTokensDetails(cached_tokens=usage.cached_tokens),
                total_tokens=usage.prompt_tokens + usage.completion_tokens)
            response.completed_at = int(time.time())
            run.conversation.append(_output_message(end))
            if incomplete and not end.tool_calls:
                response.status = "incomplete"
                response.incomplete_details = r.IncompleteDetails(reason="max_output_tokens")
                yield emit(r.ResponseIncomplete, response=response)
            else:
                response.status = "completed"
                yield emit(r.ResponseCompleted, response=response)
        except (asyncio.CancelledError, GeneratorExit):
            response.status = "cancelled"
            emit(r.ErrorEvent, code="response_cancelled", message="the response was cancelled", param=None)
            raise
        except Exception as exc:  # noqa: BLE001 - the response fails, and says why
            run.error = exc
            response.status = "failed"
            response.error = r.ResponseError(code=getattr(exc, "code", None) or "server_error", message=str(exc))
            yield emit(r.ResponseFailed, response=response)
        finally:
            await parts.aclose()  # type: ignore[attr-defined]
            run.end()
            if store:
                self._write_later(run)

    # Reading, cancelling, deleting

    async def get(self, ident: str) -> Run:
        """A running or stored response (a stored one as a finished Run, its events parsed)."""
        run = self._runs.get(ident)
        if run is not None:
            return run
        stored = await self._store.responses.get(ident) if self._store is not None else None
        if stored is None:
            raise ResponseNotFound(ident)
        events = [_EVENT.validate_json(line) for line in stored.events.splitlines() if line]
        return Run(r.Response.model_validate_json(stored.response), _CONVERSATION.validate_json(stored.conversation),
                   events, finished=True)

    async def cancel(self, ident: str) -> r.Response:
        run = await self.get(ident)
        if not run.response.background:
            raise InvalidRequestError("Only background responses can be cancelled.", param="response_id")
        if run.task is not None and not run.finished:
            run.task.cancel()
            try:
                await run.task
            except asyncio.CancelledError:
                pass
        return run.response

    async def delete(self, ident: str) -> r.Deleted:
        run = self._runs.pop(ident, None)
        if run is not None and run.task is not None:
            run.task.cancel()
        deleted = self._store is not None and await self._store.responses.delete(ident)
        if run is None and not deleted:
            raise ResponseNotFound(ident)
        return r.Deleted(id=ident)

    # Storing

    def _write_later(self, run: Run) -> None:
        """Store a response that ended, off the answer's path; it is served from memory until written."""
        task = asyncio.create_task(self._write(run, forget=True))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, run: Run, forget: bool = False) -> None:
        if self._store is None:
            return
        ident = run.response.id
        try:
            events = b"\n".join(e.__pydantic_serializer__.to_json(e) for e in run.events)
            await self._store.responses.save(ident, run.response.model_dump_json(),
                                             _CONVERSATION.dump_json(run.conversation, exclude_none=True).decode(),
                                             events, finished=run.finished)
        except Exception:  # the answer was given; the log says what was not kept
            log.exception("could not store response %s", ident)
        finally:
            if forget and self._runs.get(ident) is run:
                del self._runs[ident]


async def _drain(events: AsyncIterator[r.StreamEvent]) -> None:
    async for _ in events:
        pass


def _response(responses: Responses, model: str, request: r.ResponsesRequest) -> r.Response:
    return r.Response(
        id=f"resp_{responses.tag}{uuid.uuid4().hex}", created_at=int(time.time()),
        status="queued" if request.background else "in_progress", instructions=request.instructions,
        max_output_tokens=request.max_output_tokens, model=model, output=[],
        parallel_tool_calls=request.parallel_tool_calls is not False, previous_response_id=request.previous_response_id,
        store=request.store, background=request.background, temperature=request.temperature, top_p=request.top_p,
        text=request.text or r.TextConfig(), tool_choice=request.tool_choice or "auto", tools=request.tools or [],
        metadata=request.metadata or {}, user=request.user)


def _chat_request(request: r.ResponsesRequest, conversation: list[ChatMessage]) -> ChatCompletionRequest:
    messages = [ChatMessage(role="system", content=request.instructions)] if request.instructions else []
    fields: dict[str, object] = {
        "model": request.model, "messages": messages + conversation, "max_tokens": request.max_output_tokens,
        "temperature": request.temperature, "top_p": request.top_p,
    }
    if request.tools:
        fields["tools"] = [Tool(type="function", function=FunctionDefinition(
            name=t.name, description=t.description, parameters=t.parameters or {"type": "object", "properties": {}},
            strict=t.strict)) for t in request.tools]
        choice = request.tool_choice
        fields["tool_choice"] = NamedToolChoice(type="function", function=NamedFunction(name=choice.name)) \
            if isinstance(choice, r.FunctionChoice) else choice
    form = request.text.format if request.text else None
    if isinstance(form, r.TextFormatSchema):
        fields["response_format"] = ResponseFormat(type="json_schema", json_schema=JsonSchemaFormat.model_validate(
            form.model_dump(by_alias=True, exclude={"type"})))
    elif form is not None and form.type == "json_object":
        fields["response_format"] = ResponseFormat(type="json_object")
    return ChatCompletionRequest.model_validate(fields)


def _input_messages(items: str | list[r.InputItem]) -> list[ChatMessage]:
    if isinstance(items, str):
        return [ChatMessage(role="user", content=items)]
    messages: list[ChatMessage] = []
    for item in items:
        if isinstance(item, r.MessageItem):
            messages.append(ChatMessage(role=item.role, content=_text(item.content, "input")))
        elif isinstance(item, r.FunctionCallItem):
            call = ToolCall(id=item.call_id, function=ChatFunctionCall(name=item.name, arguments=item.arguments))
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant" and last.tool_calls and not last.content:
                last.tool_calls.append(call)  # consecutive calls are one assistant turn
            else:
                messages.append(ChatMessage(role="assistant", tool_calls=[call]))
        else:
            messages.append(ChatMessage(role="tool", tool_call_id=item.call_id, content=_text(item.output, "input")))
    return messages


def _text(content: str | list[r.InputPart], param: str) -> str:
    if isinstance(content, str):
        return content
    for part in content:
        if not isinstance(part, r.InputText):
            raise InvalidRequestError(f"input parts of type {part.type!r} are not supported by text models",
                                      code="unsupported_content", param=param)
    return "\n".join(part.text for part in content if isinstance(part, r.InputText))


def _output_message(end: Outcome) -> ChatMessage:
    """The answer as the next turn's history sees it."""
    if end.tool_calls:
        return ChatMessage(role="assistant", tool_calls=list(end.tool_calls))
    return ChatMessage(role="assistant", content=end.text)

