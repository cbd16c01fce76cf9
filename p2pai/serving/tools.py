"""Tool calling: what the template sees, what the output is constrained to, and parsing calls back out.

A forced call (`tool_choice` "required" or a named function) is guaranteed by
a grammar over `{"name": ..., "arguments": {...}}`. With "auto" the model
writes freely and calls are recognised in the common shapes: `<tool_call>`
blocks (Hermes/Qwen templates) or a bare JSON object naming a tool.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from ..backends.base import InvalidRequestError
from ..protocol.openai import FunctionCall, ToolCall

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


@dataclass(frozen=True)
class ToolPlan:
    template_tools: list[dict[str, Any]] | None
    """Tools handed to the chat template (None: the template sees no tools)."""
    schema: dict[str, Any] | None
    """The JSON schema a forced call follows (tool_choice "required" or named)."""
    names: tuple[str, ...]
    """Tool names whose calls are parsed from the output; empty: plain text answer."""


NO_TOOLS = ToolPlan(None, None, ())


def plan_tools(tools: list[dict[str, Any]] | None, choice: Any, template_supports_tools: bool, model: str) -> ToolPlan:
    if not tools or choice == "none":
        return NO_TOOLS
    if not template_supports_tools:
        raise InvalidRequestError(
            f"model {model!r} has no chat template that supports tools", code="tools_not_supported", param="tools"
        )
    by_name = {tool["function"]["name"]: tool for tool in tools}
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        if name not in by_name:
            raise InvalidRequestError(f"tool_choice names an unknown function {name!r}", param="tool_choice")
        return ToolPlan(tools, _call_schema([by_name[name]]), (name,))
    if choice == "required":
        return ToolPlan(tools, _call_schema(tools), tuple(by_name))
    return ToolPlan(tools, None, tuple(by_name))


def _call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    variants = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool["function"]["name"]},
                "arguments": tool["function"].get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
        }
        for tool in tools
    ]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def parse_tool_calls(text: str, names: tuple[str, ...]) -> list[ToolCall]:
    """OpenAI `tool_calls` found in `text`; empty when the model answered in prose."""
    if not names:
        return []
    blocks = _TOOL_CALL_BLOCK.findall(text) or [text.strip()]
    calls = []
    for block in blocks:
        fenced = _FENCE.match(block)
        call = _as_call(fenced.group(1) if fenced else block, names)
        if call is None:
            return []
        calls.append(call)
    return calls


def _as_call(block: str, names: tuple[str, ...]) -> ToolCall | None:
    try:
        data = json.loads(block)
    except (ValueError, RecursionError):  # the model's output: nested deeper than json takes is just text
        return None
    if not isinstance(data, dict) or data.get("name") not in names:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    return ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", function=FunctionCall(
        name=data["name"],
        arguments=arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False),
    ))
