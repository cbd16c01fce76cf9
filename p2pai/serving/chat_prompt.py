"""Chat messages to a prompt string, with the model's own template when it has one."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ..backends.base import InvalidRequestError
from ..models.config import ModelConfig

if TYPE_CHECKING:
    from llama_cpp.llama_types import ChatCompletionRequestMessage, ChatCompletionTool


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    stop: tuple[str, ...]
    add_special: bool
    """False when the template already wrote BOS and other special tokens."""


Renderer = Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], ChatPrompt]


@dataclass(frozen=True)
class ChatTemplate:
    render: Renderer
    supports_tools: bool
    source: str
    """Where the template came from, for /system and errors."""


def chat_template(config: ModelConfig, metadata: dict[str, str], bos: str, eos: str) -> ChatTemplate:
    """Pick the template by the precedence documented on TemplateConfig."""
    if config.template.chat:
        return _jinja(config.template.chat, bos, eos, "config")
    name = config.effective_chat_format()
    if name:
        return _named(name)
    own = metadata.get("tokenizer.chat_template")
    if own and config.template.use_tokenizer_template:
        return _jinja(own, bos, eos, "gguf")
    return _named("chatml")


def _jinja(template: str, bos: str, eos: str, source: str) -> ChatTemplate:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)

    def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> ChatPrompt:
        try:
            # The dicts are the validated request's messages and tools, which have llama_cpp's shapes.
            result = formatter(messages=cast("list[ChatCompletionRequestMessage]", messages),
                               tools=cast("list[ChatCompletionTool] | None", tools))
        except Exception as exc:  # the template itself rejects the conversation (raise_exception)
            raise InvalidRequestError(f"the model's chat template rejected the messages: {exc}",
                                      param="messages") from exc
        return ChatPrompt(result.prompt, _stops(result.stop), add_special=not result.added_special)

    return ChatTemplate(render, supports_tools="tools" in template, source=source)


@functools.cache
def _named(name: str) -> ChatTemplate:
    from llama_cpp import llama_chat_format

    format_fn = getattr(llama_chat_format, "format_" + name.replace("-", "").replace(".", ""), None) or getattr(
        llama_chat_format, "format_" + name.replace("-", "_"), None
    )
    if format_fn is None:
        raise InvalidRequestError(f"unknown chat format {name!r} in the model's config", code="invalid_model_config")

    def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> ChatPrompt:
        result = format_fn(messages=messages)
        return ChatPrompt(result.prompt, _stops(result.stop), add_special=not result.added_special)

    return ChatTemplate(render, supports_tools=False, source=f"chat_format:{name}")


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)
