"""POST /v1/chat/completions: messages to a prompt, generation, OpenAI's response shapes.

Also the one serving path of the other chat-like families (Anthropic Messages, OpenAI
Responses): they map their request to a ChatCompletionRequest and read one `turn`, text
deltas then its `Outcome` (tool calls parsed, the stop string named), shaping only the answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..backends.base import GenerationChunk, GenerationRequest, InvalidRequestError, TokenLogprob, Usage
from ..protocol.openai import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatLogprobs,
    ChatMessage,
    FinishReason,
    NamedToolChoice,
    TextPart,
    ToolCall,
    ToolCallDelta,
)
from ..protocol.openai import TokenLogprob as TokenLogprobOut
from ..protocol.openai import TopLogprob as TopLogprobOut
from .context import ServedModel, collect, new_id, now, primed, total_usage, with_seed
from .grammar import JSON_OBJECT_SCHEMA, Constraint, build_grammar
from .tools import ToolPlan, parse_tool_calls, plan_tools
from .validation import check_count, check_logit_bias


async def prepare(served: ServedModel, request: ChatCompletionRequest) -> tuple[GenerationRequest, ToolPlan]:
    """The generation a request asks for; everything checked before any of it reaches llama.cpp."""
    check_count(len(request.messages), served.limits.max_messages, "messages", "messages")
    check_logit_bias(request.logit_bias, served.engine.info.n_vocab)
    template = served.template
    tools = [tool.model_dump(exclude_none=True) for tool in request.tools] if request.tools else None
    choice = request.tool_choice
    plan = plan_tools(tools, choice.model_dump() if isinstance(choice, NamedToolChoice) else choice,
                      template.supports_tools, served.name)
    grammar = await build_grammar(_constraints(request, plan), _schemas(request), served.limits,
                                  served.engine.info.n_vocab)
    messages = [_message(m, served.name) for m in request.messages]
    beginning = _beginning_to_continue(messages) if request.continue_final_message else ""
    prompt = template.render(messages, plan.template_tools)
    generation = GenerationRequest(
        prompt=prompt.text + beginning,
        sampling=served.sampling(request, grammar),
        max_tokens=served.max_tokens(request.token_limit()),
        stop=prompt.stop + tuple(served.config.stopwords) + request.stop_list(),
        logprobs=(request.top_logprobs or 0) if request.logprobs else None,
        add_special=prompt.add_special,
    )
    return generation, plan


def _constraints(request: ChatCompletionRequest, plan: ToolPlan) -> list[Constraint]:
    form = request.response_format
    schema = None
    if form is not None and form.type == "json_object":
        schema = JSON_OBJECT_SCHEMA
    elif form is not None and form.type == "json_schema":
        schema = (form.json_schema and form.json_schema.schema_) or JSON_OBJECT_SCHEMA
    return [
        Constraint("grammar", grammar=request.grammar),
        Constraint("response_format.json_schema.schema" if form and form.type == "json_schema" else "response_format",
                   schema=schema),
        Constraint("tool_choice", schema=plan.schema),
        Constraint("grammar_json_functions", schema=request.grammar_json_functions),
    ]


def _schemas(request: ChatCompletionRequest) -> list[tuple[dict[str, Any], str]]:
    """Every JSON schema of the request, for its size and bounds."""
    schemas = [(tool.function.parameters, f"tools[{i}].function.parameters")
               for i, tool in enumerate(request.tools or ())]
    form = request.response_format
    if form is not None and form.json_schema is not None and form.json_schema.schema_ is not None:
        schemas.append((form.json_schema.schema_, "response_format.json_schema.schema"))
    if request.grammar_json_functions is not None:
        schemas.append((request.grammar_json_functions, "grammar_json_functions"))
    return schemas


def _beginning_to_continue(messages: list[dict[str, Any]]) -> str:
    """Take the final assistant message off: the prompt asks for its reply and ends with it."""
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise InvalidRequestError(
            "continue_final_message needs a final assistant message after the conversation",
            param="messages",
        )
    return messages.pop()["content"]


def _message(message: ChatMessage, model: str) -> dict[str, Any]:
    content = message.content
    if isinstance(content, list):
        if any(not isinstance(part, TextPart) for part in content):
            raise InvalidRequestError(
                f"model {model!r} accepts only text content parts", code="unsupported_content", param="messages"
            )
        content = "\n".join(part.text for part in content if isinstance(part, TextPart))
    out: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role, "content": content or ""}
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [call.model_dump() for call in message.tool_calls]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


@dataclass(frozen=True)
class Outcome:
    """How one answer ended."""

    text: str
    """The whole text (empty when the answer is tool calls)."""
    tool_calls: list[ToolCall]
    finish_reason: FinishReason
    """stop, length, or tool_calls when ``tool_calls`` were recognised."""
    stop_sequence: str | None
    """The stop string that ended it, if one did (the template's and the config's count too)."""
    usage: Usage


async def turn(served: ServedModel, request: ChatCompletionRequest) -> AsyncIterator[str | Outcome]:
    """One answer (``request.n`` is not read): its text as generated, then its Outcome. Everything
    that can refuse the request does so before this returns, so no response has begun. With tools,
    calls are recognised on the whole answer, so the text comes in one piece at the end."""
    generation, plan = await prepare(served, request)
    return _turn(await primed(served.engine.generate(generation)), plan)


async def _turn(chunks: AsyncIterator[GenerationChunk], plan: ToolPlan) -> AsyncIterator[str | Outcome]:
    try:
        if plan.names:
            result = await collect(chunks)
            calls = parse_tool_calls(result.text, plan.names)
            if calls:
                yield Outcome("", calls, "tool_calls", None, result.usage)
                return
            if result.text:
                yield result.text
            yield Outcome(result.text, [], result.finish_reason, result.stop_sequence, result.usage)
            return
        parts = []
        async for piece in chunks:
            if piece.text:
                parts.append(piece.text)
                yield piece.text
            if piece.finish_reason is not None:
                assert piece.usage is not None
                yield Outcome("".join(parts), [], piece.finish_reason, piece.stop_sequence, piece.usage)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def outcome(parts: AsyncIterator[str | Outcome]) -> Outcome:
    """A turn read to its end."""
    async for part in parts:
        if isinstance(part, Outcome):
            return part
    raise RuntimeError("a turn ended without its outcome")


async def complete(served: ServedModel, request: ChatCompletionRequest) -> ChatCompletion:
    generation, plan = await prepare(served, request)
    choices, usages = [], []
    for index in range(request.n):
        result = await collect(served.generate(with_seed(generation, index)))
        usages.append(result.usage)
        message = AssistantMessage(content=result.text)
        finish: FinishReason = result.finish_reason
        calls = parse_tool_calls(result.text, plan.names)
        if calls:
            message = AssistantMessage(content=None, tool_calls=calls)
            finish = "tool_calls"
        choices.append(ChatChoice(index=index, message=message,
                                  logprobs=_logprobs(result.logprobs) if request.logprobs else None,
                                  finish_reason=finish))
    return ChatCompletion(id=new_id("chatcmpl"), created=now(), model=served.name, choices=choices,
                          usage=total_usage(usages, prompt_once=True))


async def stream(served: ServedModel, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
    """Chunks as they are generated. Tool calls are recognised on the whole answer, so
    with tools the answer is sent as one chunk once complete."""
    generation, plan = await prepare(served, request)
    ident, created = new_id("chatcmpl"), now()
    usages = []

    def chunk(index: int, delta: ChatDelta, finish: FinishReason | None = None,
              logprobs: ChatLogprobs | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=ident, created=created, model=served.name, choices=[
            ChatChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish)])

    for index in range(request.n):
        chunks = await primed(served.generate(with_seed(generation, index)))
        yield chunk(index, ChatDelta(role="assistant", content=""))
        if plan.names:
            result = await collect(chunks)
            usages.append(result.usage)
            calls = parse_tool_calls(result.text, plan.names)
            if calls:
                deltas = [ToolCallDelta(**call.model_dump(), index=i) for i, call in enumerate(calls)]
                yield chunk(index, ChatDelta(tool_calls=deltas))
                yield chunk(index, ChatDelta(), "tool_calls")
            else:
                yield chunk(index, ChatDelta(content=result.text),
                            logprobs=_stream_logprobs(request, result.logprobs))
                yield chunk(index, ChatDelta(), result.finish_reason)
            continue
        async for piece in chunks:
            if piece.text or piece.logprobs:
                yield chunk(index, ChatDelta(content=piece.text),
                            logprobs=_stream_logprobs(request, list(piece.logprobs)))
            if piece.finish_reason is not None:
                assert piece.usage is not None
                usages.append(piece.usage)
                yield chunk(index, ChatDelta(), piece.finish_reason)
    if request.stream_options and request.stream_options.include_usage:
        yield ChatCompletionChunk(id=ident, created=created, model=served.name, choices=[],
                                  usage=total_usage(usages, prompt_once=True))


def _stream_logprobs(request: ChatCompletionRequest, logprobs: list[TokenLogprob]) -> ChatLogprobs | None:
    return _logprobs(logprobs) if request.logprobs else None


def _logprobs(logprobs: list[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(content=[
        TokenLogprobOut(token=lp.token, logprob=lp.logprob, bytes=list(lp.bytes), top_logprobs=[
            TopLogprobOut(token=t.token, logprob=t.logprob, bytes=list(t.bytes)) for t in lp.top])
        for lp in logprobs
    ])
