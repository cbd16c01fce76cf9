"""The OpenAI-compatible endpoints: request bodies, validated strictly, and the answers.

Unknown top-level fields of a request are refused with a 400, as OpenAI does,
so a typo in a parameter name is reported instead of silently ignored. Fields
OpenAI defines that cannot change our output (user, store, metadata...) are
accepted, and so are LocalAI's request fields (its `schema.OpenAIRequest`, one
shape for chat, completions, edits and embeddings), so a client written for
LocalAI works: the llama.cpp sampling ones are applied (`typical_p`,
`mirostat`/`mirostat_tau`/`mirostat_eta`, `repeat_last_n`, `ignore_eos`), the
legacy `functions`/`function_call` become `tools`/`tool_choice`,
`grammar_json_functions` constrains the output like a JSON schema, and the
rest is accepted and ignored (see `_LocalAI`). Answers serialize to exactly OpenAI's shapes: a field that OpenAI
leaves out when it has nothing to say (a delta's role, a chunk's usage) is
left out, not sent as null.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from ..backends.tasks import Task
from ..serving.limits import (
    MAX_LOGIT_BIAS,
    MAX_METADATA,
    MAX_MODEL_NAME,
    MAX_N,
    MAX_SEED,
    MAX_STOP,
    MAX_STOP_LENGTH,
    MAX_TOOLS,
    MAX_TOP_LOGPROBS,
)


def _integral(value: Any) -> Any:
    """JSON does not tell 2 from 2.0: an integral number is an integer, as JSON Schema's "integer" has it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


INTEGRAL = BeforeValidator(_integral)
"""Put after an int's Field constraints in Annotated (before them, they would not reach the JSON schema)."""
Int = Annotated[int, INTEGRAL]
Seed = Annotated[int, Field(ge=-MAX_SEED - 1, le=MAX_SEED), INTEGRAL]
TokenIdKey = Annotated[str, Field(pattern=r"^(0|[1-9][0-9]{0,9})$")]
"""A token id as a JSON object key (logit_bias)."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: Annotated[str, Field(max_length=MAX_MODEL_NAME)] | None = None
    user: str | None = None


class LegacyFunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[str, Field(max_length=64)]


class _LocalAI(_Request):
    """LocalAI's request fields beyond OpenAI's, plus newer OpenAI fields that do not apply here.

    Applied: typical_p, mirostat, mirostat_tau, mirostat_eta, repeat_last_n, ignore_eos (llama.cpp
    sampling; on embeddings they have nothing to act on). Ignored, as their notes say."""

    typical_p: Annotated[float, Field(gt=0, le=1)] | None = None
    mirostat: Annotated[int, Field(ge=0, le=2), INTEGRAL] | None = None
    mirostat_tau: Annotated[float, Field(ge=0)] | None = None
    mirostat_eta: Annotated[float, Field(ge=0)] | None = None
    repeat_last_n: Annotated[int, Field(ge=-1), INTEGRAL] | None = None
    ignore_eos: bool | None = None
    tfz: float | None = None
    """Ignored: llama.cpp removed tail-free sampling."""
    n_keep: Int | None = None
    """Ignored: a prompt longer than the context is refused, never shifted."""
    backend: str | None = None
    """Ignored: the model's config names its backend."""
    batch: Int | None = None
    rope_freq_base: float | None = None
    rope_freq_scale: float | None = None
    tokenizer: str | None = None
    model_base_name: str | None = None
    """Ignored: load-time settings belong in the model's config."""
    negative_prompt: str | None = None
    negative_prompt_scale: float | None = None
    clip_skip: Int | None = None
    step: Int | None = None
    size: str | None = None
    quality: str | None = None
    ref_images: list[str] | None = None
    files: list[str] | None = None
    file: str | None = None
    language: str | None = None
    translate: bool | None = None
    """Ignored: image and audio fields of LocalAI's shared request shape."""
    reasoning_effort: str | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    verbosity: str | None = None
    audio: dict[str, Any] | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    """Ignored newer OpenAI fields, as vLLM does: text models here neither reason aloud, search nor
    speak; prompt caching is automatic."""
    functions: Annotated[list[FunctionDefinition], Field(max_length=MAX_TOOLS)] | None = None
    """OpenAI's legacy form of `tools`, which LocalAI clients still send: on chat, mapped to tools
    (calls come back as `tool_calls`); ignored elsewhere."""
    function_call: Literal["none", "auto"] | LegacyFunctionCall | None = None
    """The legacy `tool_choice`: on chat, mapped to it; ignored elsewhere."""
    metadata: Annotated[dict[str, str], Field(max_length=MAX_METADATA)] | None = None
    """Accepted and ignored (OpenAI's and LocalAI's)."""
    grammar_json_functions: dict[str, Any] | None = None
    """LocalAI's JSON schema (oneOf/anyOf of function objects, $defs) the output must follow, on chat
    and completions (like `grammar`); ignored by edits and embeddings."""


class _Sampling(_LocalAI):
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0), INTEGRAL] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repeat_penalty: Annotated[float, Field(ge=0)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    seed: Seed | None = None
    max_tokens: Annotated[int, Field(ge=1), INTEGRAL] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N), INTEGRAL] = 1
    stop: Annotated[str, Field(max_length=MAX_STOP_LENGTH)] | Annotated[
        list[Annotated[str, Field(max_length=MAX_STOP_LENGTH)]], Field(max_length=MAX_STOP)] | None = None
    grammar: str | None = None
    """GBNF grammar (LocalAI extension)."""
    logit_bias: Annotated[
        dict[TokenIdKey, Annotated[float, Field(ge=-100, le=100)]],
        Field(max_length=MAX_LOGIT_BIAS, json_schema_extra={"additionalProperties": False})] | None = None
    """Accepted and validated (token ids of the model, biases in [-100, 100]), not applied yet."""
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["image_url", "input_audio", "file"]


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    name: str
    arguments: str


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """Extra keys are ignored: clients echo back whole assistant messages (refusal, audio...).

    Content is required, except from an assistant message that carries tool calls (the JSON
    schema says so too, for clients and fuzzers that generate from it)."""

    model_config = ConfigDict(extra="ignore", strict=True, json_schema_extra={"anyOf": [
        {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
        {"required": ["role", "tool_calls"],
         "properties": {"role": {"const": "assistant"}, "tool_calls": {"type": "array", "minItems": 1}}},
    ]})

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        return self


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[str, Field(max_length=64)]


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema object")
        return self


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1), INTEGRAL] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), INTEGRAL] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    continue_final_message: bool = False
    """vLLM's extension: the last (assistant) message is a beginning to continue, not a turn to answer."""
    store: bool | None = None
    service_tier: str | None = None

    @model_validator(mode="after")
    def _legacy_functions(self) -> ChatCompletionRequest:
        if self.functions and not self.tools:
            self.tools = [Tool(type="function", function=f) for f in self.functions]
        call = self.function_call
        if call is not None and self.tool_choice is None:
            self.tool_choice = call if isinstance(call, str) else NamedToolChoice(
                type="function", function=NamedFunction(name=call.name))
        return self

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1)] | Annotated[list[Int], Field(min_length=1)] | Annotated[
        list[Annotated[list[Int], Field(min_length=1)]], Field(min_length=1)
    ]
    suffix: str | None = None
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), INTEGRAL] | None = None
    best_of: Annotated[int, Field(ge=1, le=MAX_N), INTEGRAL] | None = None

    @model_validator(mode="after")
    def _best_of(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of other than n is not supported")
        return self


class EditRequest(_Sampling):
    """The sampling fields of completions apply (LocalAI's edits take them); an edit is not streamed."""

    instruction: Annotated[str, Field(min_length=1)]
    input: str = ""
    stream: Literal[False] = False


class EmbeddingRequest(_LocalAI):
    input: Annotated[str, Field(min_length=1)] | Annotated[
        list[Annotated[str, Field(min_length=1)]], Field(min_length=1)
    ] | Annotated[list[Int], Field(min_length=1)] | Annotated[
        list[Annotated[list[Int], Field(min_length=1)]], Field(min_length=1)
    ]
    """Texts or token ids; how many per request is a node setting (Limits.max_prompts)."""
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1), INTEGRAL] | None = None


class TokenizeRequest(_Request):
    content: str | None = None
    prompt: str | None = None
    """Accepted as a synonym of content."""
    add_special: bool = True

    @model_validator(mode="after")
    def _one_text(self) -> TokenizeRequest:
        if (self.content is None) == (self.prompt is None):
            raise ValueError("give the text to tokenize as `content`")
        return self

    def text(self) -> str:
        return self.content if self.content is not None else self.prompt or ""


# Answers


def _absent(value: object) -> bool:
    return value is None


def omitted(default: Any = None) -> Any:
    """A field left out of the JSON when it is None (OpenAI omits it rather than sending null)."""
    return Field(default=default, exclude_if=_absent)


FinishReason = Literal["stop", "length", "tool_calls", "cancelled"]
"""`cancelled` never reaches a client: it ends a generation whose client went away."""


class PromptTokensDetails(BaseModel):
    cached_tokens: int
    """Prompt tokens whose KV cache was reused instead of recomputed."""


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = omitted()


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage


class ToolCallDelta(ToolCall):
    index: int


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = omitted()
    content: str | None = omitted()
    tool_calls: list[ToolCallDelta] | None = omitted()


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a chat stream; the last one (with include_usage) has no choices, only usage."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: CompletionUsage | None = omitted()


class CompletionLogprobs(BaseModel):
    """The legacy logprobs object: parallel lists plus character offsets."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None


class Completion(BaseModel):
    """A whole completion, and also each event of a completion stream (which then may carry usage only)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = omitted()


class EditChoice(BaseModel):
    index: int
    text: str


class Edit(BaseModel):
    object: Literal["edit"] = "edit"
    created: int
    model: str
    choices: list[EditChoice]
    usage: CompletionUsage


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str
    """Floats, or with encoding_format "base64" the little-endian float32 bytes in base64."""


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Tokens(BaseModel):
    tokens: list[int]


class ModelCard(BaseModel):
    """OpenAI's model object plus where the swarm serves the model (our fields)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    backend: str
    loaded: bool
    tasks: list[Task]
    """What the model serves (on at least one node): chat, completion, embeddings, rerank, transcription..."""
    embeddings: bool
    """"embeddings" in tasks."""
    nodes: list[str]
    """Ids of the nodes that serve this model."""
    loaded_on: list[str]
    """Ids of the nodes that have it loaded now."""
    on_disk: list[str] = Field(default_factory=list)
    """Ids of the nodes that announce its file: a node can pull it from them (`p2pai pull`)."""
    pullable: bool = False
    sha256: str | None = None
    size: int | None = None
    """Bytes of its file."""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
