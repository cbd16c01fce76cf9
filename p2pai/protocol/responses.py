"""OpenAI's Responses API (POST /v1/responses, GET|DELETE /v1/responses/{id}, POST .../cancel):
requests, the response object, its output items and stream events.

Requests are validated strictly (an unknown field is a 400); fields that cannot change a text
model's output here (reasoning, include, truncation, service_tier...) are accepted and ignored.
Hosted tools (web search, file search...) are refused: only function tools can run here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from ..serving.limits import MAX_METADATA, MAX_MODEL_NAME, MAX_TOOLS
from .openai import INTEGRAL, JsonSchemaFormat, omitted


class _Item(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class InputText(_Item):
    type: Literal["input_text", "output_text"]
    text: str


class InputOther(_Item):
    """Parts a text model cannot read: refused by the serving layer, by name."""

    type: Literal["input_image", "input_file", "input_audio", "refusal"]


InputPart = Annotated[InputText | InputOther, Field(discriminator="type")]


class MessageItem(_Item):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputPart]


class FunctionCallItem(_Item):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(_Item):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputPart]


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    name: Annotated[str, Field(max_length=64)]


ToolChoice = Literal["none", "auto", "required"] | FunctionChoice


class TextFormatPlain(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text", "json_object"]


class TextFormatSchema(JsonSchemaFormat):
    """`text.format` of type json_schema: Chat's json_schema fields, flattened."""

    model_config = ConfigDict(serialize_by_alias=True)

    type: Literal["json_schema"]


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    format: Annotated[TextFormatPlain | TextFormatSchema, Field(discriminator="type")] = TextFormatPlain(type="text")
    verbosity: str | None = None
    """Accepted and ignored."""


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: Annotated[str, Field(min_length=1, max_length=MAX_MODEL_NAME)]
    input: Annotated[str, Field(min_length=1)] | Annotated[list[InputItem], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1), INTEGRAL] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    previous_response_id: Annotated[str, Field(max_length=128)] | None = None
    store: bool = True
    background: bool = False
    stream: bool = False
    metadata: Annotated[dict[str, str], Field(max_length=MAX_METADATA)] | None = None
    user: str | None = None
    # Accepted and ignored: nothing here reasons aloud, includes extra outputs, truncates or tiers.
    reasoning: dict[str, Any] | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    service_tier: str | None = None
    max_tool_calls: Annotated[int, Field(ge=1), INTEGRAL] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20), INTEGRAL] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    stream_options: dict[str, Any] | None = None


# The response object

Status = Literal["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"]


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCall(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = Annotated[OutputMessage | FunctionCall, Field(discriminator="type")]


class InputTokensDetails(BaseModel):
    cached_tokens: int


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseError(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class Response(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: Status
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    store: bool
    background: bool
    temperature: float | None
    top_p: float | None
    text: TextConfig
    tool_choice: ToolChoice
    tools: list[FunctionTool]
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: ResponseUsage | None = None
    metadata: dict[str, str]
    user: str | None = omitted()


class Deleted(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True


# Stream events, each with its sequence number (from 0), in the order a stream sends them


class SequencedEvent(BaseModel):
    sequence_number: int


class ResponseCreated(SequencedEvent):
    type: Literal["response.created"] = "response.created"
    response: Response


class ResponseInProgress(SequencedEvent):
    type: Literal["response.in_progress"] = "response.in_progress"
    response: Response


class OutputItemAdded(SequencedEvent):
    type: Literal["response.output_item.added"] = "response.output_item.added"
    output_index: int
    item: OutputItem


class ContentPartAdded(SequencedEvent):
    type: Literal["response.content_part.added"] = "response.content_part.added"
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class OutputTextDelta(SequencedEvent):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any] = Field(default_factory=list)


class OutputTextDone(SequencedEvent):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = Field(default_factory=list)


class ContentPartDone(SequencedEvent):
    type: Literal["response.content_part.done"] = "response.content_part.done"
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class FunctionCallArgumentsDelta(SequencedEvent):
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"
    item_id: str
    output_index: int
    delta: str


class FunctionCallArgumentsDone(SequencedEvent):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    item_id: str
    output_index: int
    name: str
    arguments: str


class OutputItemDone(SequencedEvent):
    type: Literal["response.output_item.done"] = "response.output_item.done"
    output_index: int
    item: OutputItem


class ResponseCompleted(SequencedEvent):
    type: Literal["response.completed"] = "response.completed"
    response: Response


class ResponseIncomplete(SequencedEvent):
    type: Literal["response.incomplete"] = "response.incomplete"
    response: Response


class ResponseFailed(SequencedEvent):
    type: Literal["response.failed"] = "response.failed"
    response: Response


class ErrorEvent(SequencedEvent):
    """A failure after the stream began that is not the response's own (the stream's delivery)."""

    type: Literal["error"] = "error"
    code: str | None
    message: str
    param: str | None


StreamEvent = (ResponseCreated | ResponseInProgress | OutputItemAdded | ContentPartAdded | OutputTextDelta
               | OutputTextDone | ContentPartDone | FunctionCallArgumentsDelta | FunctionCallArgumentsDone
               | OutputItemDone | ResponseCompleted | ResponseIncomplete | ResponseFailed | ErrorEvent)


class ResponseStreamEvent(RootModel[StreamEvent]):
    """One event of a stream (its `event:` line names its type), for the OpenAPI document."""
