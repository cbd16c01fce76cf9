"""Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens): requests, answers, stream events.

Requests are validated strictly (an unknown top-level field is a 400, as Anthropic does); content
blocks a text model cannot use (images, documents) are parsed and refused by the serving layer
with a clear message. Answers and events serialize to Anthropic's shapes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from ..serving.limits import MAX_METADATA, MAX_MODEL_NAME, MAX_STOP, MAX_STOP_LENGTH, MAX_TOOLS
from .openai import INTEGRAL, omitted


class _Block(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class OtherBlockParam(_Block):
    """Blocks a text model cannot read: refused by the serving layer, by name."""

    type: Literal["image", "document", "thinking", "redacted_thinking", "search_result", "server_tool_use",
                  "web_search_tool_result"]


class TextBlockParam(_Block):
    type: Literal["text"]
    text: str


class ToolUseBlockParam(_Block):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlockParam(_Block):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlockParam | OtherBlockParam] = ""
    is_error: bool | None = None


ContentBlockParam = Annotated[TextBlockParam | ToolUseBlockParam | ToolResultBlockParam | OtherBlockParam,
                              Field(discriminator="type")]


class MessageParam(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["user", "assistant"]
    content: str | list[ContentBlockParam]


class ToolParam(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class ToolChoiceAuto(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["auto", "any", "none"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["tool"]
    name: Annotated[str, Field(max_length=64)]
    disable_parallel_tool_use: bool | None = None


ToolChoice = Annotated[ToolChoiceAuto | ToolChoiceTool, Field(discriminator="type")]


class Metadata(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: str | None = None


class CountTokensRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: Annotated[str, Field(min_length=1, max_length=MAX_MODEL_NAME)]
    messages: Annotated[list[MessageParam], Field(min_length=1)]
    system: str | list[TextBlockParam] | None = None
    tools: Annotated[list[ToolParam], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = None
    """Accepted and ignored: these models do not think aloud."""


class MessagesRequest(CountTokensRequest):
    max_tokens: Annotated[int, Field(ge=1), INTEGRAL]
    stop_sequences: Annotated[list[Annotated[str, Field(max_length=MAX_STOP_LENGTH)]],
                              Field(max_length=MAX_STOP)] | None = None
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0), INTEGRAL] | None = None
    metadata: Metadata | Annotated[dict[str, str], Field(max_length=MAX_METADATA)] | None = None
    stream: bool = False
    service_tier: str | None = None
    """Accepted and ignored, like `thinking`."""


# Answers

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = TextBlock | ToolUseBlock


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int | None = omitted()
    """Prompt tokens whose KV cache was reused."""


class Message(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[ContentBlock]
    model: str
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: Usage


class TokenCount(BaseModel):
    input_tokens: int


# Stream events, in the order a stream sends them


class MessageStart(BaseModel):
    type: Literal["message_start"] = "message_start"
    message: Message


class ContentBlockStart(BaseModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ContentBlock


class Ping(BaseModel):
    type: Literal["ping"] = "ping"


class TextDelta(BaseModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class InputJsonDelta(BaseModel):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class ContentBlockDelta(BaseModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: TextDelta | InputJsonDelta


class ContentBlockStop(BaseModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class MessageDeltaBody(BaseModel):
    stop_reason: StopReason
    stop_sequence: str | None


class DeltaUsage(BaseModel):
    """Totals at the end; input_tokens too, since message_start is sent before they are counted."""

    input_tokens: int
    output_tokens: int


class MessageDelta(BaseModel):
    type: Literal["message_delta"] = "message_delta"
    delta: MessageDeltaBody
    usage: DeltaUsage


class MessageStop(BaseModel):
    type: Literal["message_stop"] = "message_stop"


StreamEvent = (MessageStart | ContentBlockStart | Ping | ContentBlockDelta | ContentBlockStop | MessageDelta
               | MessageStop)


class AnthropicStreamEvent(RootModel[StreamEvent]):
    """One event of a stream (its `event:` line names its type), for the OpenAPI document."""


# Errors

ErrorType = Literal["invalid_request_error", "authentication_error", "permission_error", "not_found_error",
                    "request_too_large", "rate_limit_error", "api_error", "overloaded_error"]


class ErrorDetail(BaseModel):
    type: ErrorType
    message: str


class ErrorResponse(BaseModel):
    """Anthropic's error body, and also the `error` event of a stream that failed after it began."""

    type: Literal["error"] = "error"
    error: ErrorDetail
