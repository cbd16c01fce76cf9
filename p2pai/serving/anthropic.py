"""Anthropic's Messages on the chat serving path: the request mapped to a chat request, one turn
read, the answer shaped as a Message or as Anthropic's stream events (in their documented order:
message_start, then per content block content_block_start, ping after the first, deltas,
content_block_stop; then message_delta and message_stop)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

from ..backends.base import InvalidRequestError
from ..protocol import anthropic as a
from ..protocol.openai import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionCall,
    FunctionDefinition,
    NamedFunction,
    NamedToolChoice,
    Tool,
    ToolCall,
)
from . import chat
from .chat import Outcome
from .context import ServedModel


def chat_request(request: a.CountTokensRequest) -> ChatCompletionRequest:
    """The same conversation, tools and sampling as a chat request (validated again as one)."""
    messages = [ChatMessage(role="system", content=_text(request.system))] if request.system else []
    for message in request.messages:
        messages.extend(_messages(message))
    fields: dict[str, object] = {"model": request.model, "messages": messages}
    if request.tools:
        fields["tools"] = [Tool(type="function", function=FunctionDefinition(
            name=t.name, description=t.description, parameters=t.input_schema)) for t in request.tools]
        fields["tool_choice"] = _tool_choice(request.tool_choice)
    if isinstance(request, a.MessagesRequest):
        fields.update(max_tokens=request.max_tokens, temperature=request.temperature, top_p=request.top_p,
                      top_k=request.top_k, stop=request.stop_sequences)
    return ChatCompletionRequest.model_validate(fields)


def _text(content: str | list[a.TextBlockParam]) -> str:
    return content if isinstance(content, str) else "\n".join(block.text for block in content)


def _messages(message: a.MessageParam) -> list[ChatMessage]:
    """One Anthropic message as chat messages: tool results become tool messages, tool uses tool calls."""
    if isinstance(message.content, str):
        return [ChatMessage(role=message.role, content=message.content)]
    texts: list[str] = []
    calls: list[ToolCall] = []
    out: list[ChatMessage] = []
    for block in message.content:
        if isinstance(block, a.TextBlockParam):
            texts.append(block.text)
        elif isinstance(block, a.ToolUseBlockParam):
            calls.append(ToolCall(id=block.id, function=FunctionCall(
                name=block.name, arguments=json.dumps(block.input, ensure_ascii=False))))
        elif isinstance(block, a.ToolResultBlockParam):
            out.append(ChatMessage(role="tool", tool_call_id=block.tool_use_id, content=_result_text(block)))
        else:
            raise InvalidRequestError(f"content blocks of type {block.type!r} are not supported by text models",
                                      code="unsupported_content", param="messages")
    if texts or calls:
        out.append(ChatMessage(role=message.role, content="\n".join(texts) if texts or not calls else None,
                               tool_calls=calls or None))
    return out


def _result_text(block: a.ToolResultBlockParam) -> str:
    if isinstance(block.content, str):
        return block.content
    if any(not isinstance(part, a.TextBlockParam) for part in block.content):
        raise InvalidRequestError("tool results may hold only text blocks here", code="unsupported_content",
                                  param="messages")
    return "\n".join(part.text for part in block.content if isinstance(part, a.TextBlockParam))


def _tool_choice(choice: a.ToolChoice | None) -> str | NamedToolChoice:
    if choice is None or choice.type == "auto":
        return "auto"
    if isinstance(choice, a.ToolChoiceTool):
        return NamedToolChoice(type="function", function=NamedFunction(name=choice.name))
    return "required" if choice.type == "any" else "none"


async def count_tokens(served: ServedModel, request: a.CountTokensRequest) -> a.TokenCount:
    """The prompt's tokens as the model would read them (tools included in the template)."""
    generation, _ = await chat.prepare(served, chat_request(request))
    assert isinstance(generation.prompt, str)
    tokens = await served.engine.tokenize(generation.prompt, add_special=generation.add_special)
    return a.TokenCount(input_tokens=len(tokens))


async def create(served: ServedModel, request: a.MessagesRequest) -> a.Message:
    ident = _message_id()
    end = await chat.outcome(await chat.turn(served, chat_request(request)))
    message = _message(ident, served.name, end.usage.prompt_tokens, end.usage.cached_tokens)
    message.content = _blocks(end)
    message.stop_reason, message.stop_sequence = _stop(request, end)
    message.usage.output_tokens = end.usage.completion_tokens
    return message


async def stream(served: ServedModel, request: a.MessagesRequest) -> AsyncIterator[a.StreamEvent]:
    ident = _message_id()
    parts = await chat.turn(served, chat_request(request))  # refusals happen here, before any event
    first = await anext(parts)
    end = first if isinstance(first, Outcome) else None
    # The prompt's tokens are counted by the end: message_start says 0, message_delta the totals.
    yield a.MessageStart(message=_message(ident, served.name, 0, None))
    index = 0
    if isinstance(first, str):
        yield a.ContentBlockStart(index=0, content_block=a.TextBlock(text=""))
        yield a.Ping()
        yield a.ContentBlockDelta(index=0, delta=a.TextDelta(text=first))
        async for part in parts:
            if isinstance(part, Outcome):
                end = part
                break
            yield a.ContentBlockDelta(index=0, delta=a.TextDelta(text=part))
        yield a.ContentBlockStop(index=0)
        index = 1
    assert end is not None
    for call in end.tool_calls:
        block = a.ToolUseBlock(id=_tool_use_id(call), name=call.function.name, input={})
        yield a.ContentBlockStart(index=index, content_block=block)
        if index == 0:
            yield a.Ping()
        yield a.ContentBlockDelta(index=index, delta=a.InputJsonDelta(partial_json=call.function.arguments))
        yield a.ContentBlockStop(index=index)
        index += 1
    stop_reason, stop_sequence = _stop(request, end)
    yield a.MessageDelta(delta=a.MessageDeltaBody(stop_reason=stop_reason, stop_sequence=stop_sequence),
                         usage=a.DeltaUsage(input_tokens=end.usage.prompt_tokens,
                                            output_tokens=end.usage.completion_tokens))
    yield a.MessageStop()


def _message(ident: str, model: str, input_tokens: int, cached: int | None) -> a.Message:
    return a.Message(id=ident, content=[], model=model, stop_reason=None, stop_sequence=None,
                     usage=a.Usage(input_tokens=input_tokens, output_tokens=0, cache_read_input_tokens=cached))


def _blocks(end: Outcome) -> list[a.ContentBlock]:
    blocks: list[a.ContentBlock] = [a.TextBlock(text=end.text)] if end.text or not end.tool_calls else []
    for call in end.tool_calls:
        blocks.append(a.ToolUseBlock(id=_tool_use_id(call), name=call.function.name,
                                     input=_input(call.function.arguments)))
    return blocks


def _input(arguments: str) -> dict[str, object]:
    """A call's arguments as an object (a model that wrote another JSON value gets it wrapped)."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return {"input": arguments}
    return value if isinstance(value, dict) else {"input": value}


def _stop(request: a.MessagesRequest, end: Outcome) -> tuple[a.StopReason, str | None]:
    if end.tool_calls:
        return "tool_use", None
    if end.finish_reason == "length":
        return "max_tokens", None
    if end.stop_sequence is not None and end.stop_sequence in (request.stop_sequences or ()):
        return "stop_sequence", end.stop_sequence
    return "end_turn", None


def _message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def _tool_use_id(call: ToolCall) -> str:
    return "toolu_" + call.id.removeprefix("call_")
