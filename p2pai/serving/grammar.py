"""Output constraints (response_format, tools, `grammar`) as GBNF for llama.cpp."""

from __future__ import annotations

import json
from typing import Any

from ..backends.base import InvalidRequestError

JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}


def schema_grammar(schema: dict[str, Any], param: str) -> str:
    """GBNF for a JSON schema; a schema llama.cpp's converter refuses is a 400."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        grammar = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises plain Exceptions for unsupported schemas
        raise InvalidRequestError(f"unsupported JSON schema: {exc}", code="invalid_schema", param=param) from exc
    # The converter lets raw control characters into strings, which JSON forbids; exclude them as llama.cpp does.
    return grammar.replace(r'[^"\\]', r'[^"\\\x7F\x00-\x1F]')


def response_format_grammar(kind: str, schema: dict[str, Any] | None) -> str | None:
    if kind == "json_object":
        return schema_grammar(JSON_OBJECT_SCHEMA, "response_format")
    if kind == "json_schema":
        return schema_grammar(schema or JSON_OBJECT_SCHEMA, "response_format.json_schema.schema")
    return None


def pick_grammar(*candidates: tuple[str, str | None]) -> str | None:
    """At most one constraint may apply; two at once is an error, not a silent choice."""
    given = [(name, grammar) for name, grammar in candidates if grammar]
    if len(given) > 1:
        names = " and ".join(name for name, _ in given)
        raise InvalidRequestError(f"{names} cannot be combined in one request", code="conflicting_constraints")
    return given[0][1] if given else None
