"""Output constraints (`grammar`, response_format, forced tool calls) as GBNF, checked before llama.cpp sees them.

A client's GBNF is measured by gbnf.py; a JSON schema is bounded first (depth,
repetition counts, size), then converted by llama-cpp-python's converter
under a work budget, and what it writes is measured like a client's grammar.
All of it runs on a thread of its own, never on the event loop: a schema of a
few hundred kilobytes takes the converter a noticeable fraction of a second.

This module is the adapter of llama_cpp.llama_grammar: the converter's own
entry point (json_schema_to_gbnf) has no bounds, so `_bounded_converter`
overrides two methods of its SchemaConverter class (`visit`, `_add_rule`);
tests/test_grammar.py fails loudly if an upgrade changes them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from ..backends.base import InvalidRequestError
from .gbnf import GrammarError, GrammarTooLarge, analyze
from .limits import (
    MAX_GRAMMAR_DEPTH,
    MAX_GRAMMAR_RULES,
    MAX_SCHEMA_DEPTH,
    MAX_SCHEMA_REPETITION,
    MAX_SCHEMA_VISITS,
    Limits,
)
from .validation import check_token_ids, too_large

T = TypeVar("T")

JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}
REPETITION_KEYWORDS = ("minItems", "maxItems", "minLength", "maxLength")
"""The keywords llama-cpp-python's converter writes out in full (_build_repetition)."""
_QUANTIFIER = re.compile(r"\{\s*([0-9]*)\s*(?:,\s*([0-9]*)\s*)?\}")

_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="grammar")


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run a conversion or a measurement on the grammar threads."""
    return await asyncio.get_running_loop().run_in_executor(_THREADS, partial(fn, *args))


@dataclass(frozen=True)
class Constraint:
    """One source of an output constraint: a client's GBNF, or a JSON schema to convert."""

    param: str
    grammar: str | None = None
    schema: dict[str, Any] | None = None

    @property
    def given(self) -> bool:
        return bool(self.grammar) or self.schema is not None


async def build_grammar(constraints: list[Constraint], schemas: list[tuple[dict[str, Any], str]], limits: Limits,
                        n_vocab: int) -> str | None:
    """The grammar of the one constraint given (two at once are an error, not a silent choice).

    ``schemas`` are every JSON schema of the request with its param (tool parameters reach the
    chat template even when no call is forced): bounded together, converted only if constrained.
    """
    given = [constraint for constraint in constraints if constraint.given]
    if len(given) > 1:
        names = " and ".join(constraint.param for constraint in given)
        raise InvalidRequestError(f"{names} cannot be combined in one request", code="conflicting_constraints")
    if not given and not schemas:
        return None  # the common case: no thread hop
    return await off_loop(_build, given[0] if given else None, schemas, limits, n_vocab)


def _build(constraint: Constraint | None, schemas: list[tuple[dict[str, Any], str]], limits: Limits,
           n_vocab: int) -> str | None:
    size = sum(len(json.dumps(schema)) for schema, _ in schemas)
    if size > limits.max_schema_bytes:
        raise too_large(f"the request's JSON schemas take {size} bytes, more than this node's limit of "
                        f"{limits.max_schema_bytes}", schemas[0][1], "schema_too_large")
    for schema, param in schemas:
        check_schema(schema, param)
    if constraint is None:
        return None
    if constraint.grammar:
        return checked_grammar(constraint.grammar, limits, n_vocab, constraint.param)
    assert constraint.schema is not None
    return schema_grammar(constraint.schema, limits, n_vocab, constraint.param)


def checked_grammar(text: str, limits: Limits, n_vocab: int, param: str) -> str:
    """``text`` if llama.cpp can take it safely, else a 400 naming ``param``."""
    size = len(text.encode())
    if size > limits.max_grammar_bytes:
        raise too_large(f"the grammar is {size} bytes, more than this node's limit of "
                        f"{limits.max_grammar_bytes}", param, "grammar_too_large")
    try:
        stats = analyze(text, MAX_GRAMMAR_DEPTH, MAX_GRAMMAR_RULES)
    except GrammarTooLarge as exc:
        raise too_large(str(exc), param, "grammar_too_large") from None
    except GrammarError as exc:
        raise InvalidRequestError(f"invalid grammar: {exc}", code="invalid_grammar", param=param) from None
    if stats.branches > limits.max_grammar_branches:
        raise too_large(
            f"the grammar is too ambiguous: one position opens {_count(stats.branches)} parse stacks, more than "
            f"this node's limit of {limits.max_grammar_branches} (alternatives multiply through nested rules)",
            param, "grammar_too_large")
    check_token_ids(stats.token_ids, n_vocab, param)
    return text


def schema_grammar(schema: dict[str, Any], limits: Limits, n_vocab: int, param: str) -> str:
    """GBNF for a JSON schema; a schema too large, or one the converter refuses, is a 400."""
    check_schema(schema, param)
    converter = _bounded_converter()(MAX_SCHEMA_VISITS, limits.max_grammar_bytes)
    try:
        copy = json.loads(json.dumps(schema))  # the converter rewrites $refs in place
        converter.resolve_refs(copy, "stdin")
        converter.visit(copy, "")
        grammar = converter.format_grammar()
    except _OverBudget as exc:
        raise too_large(str(exc), param, "schema_too_large") from None
    except Exception as exc:  # noqa: BLE001 - the converter raises plain Exceptions (and asserts) for unsupported schemas
        raise InvalidRequestError(f"unsupported JSON schema: {type(exc).__name__}: {exc}",
                                  code="invalid_schema", param=param) from None
    # The converter lets raw control characters into strings, which JSON forbids; exclude them as llama.cpp does.
    grammar = grammar.replace(r'[^"\\]', r'[^"\\\x7F\x00-\x1F]')
    return checked_grammar(grammar, limits, n_vocab, param)


def check_schema(schema: Any, param: str) -> None:
    """The bounds the converter needs: nesting depth, and repetitions it would write out in full.

    Keywords are checked in sub-schemas only: a property named "minItems", or an enum value holding
    one, is not a repetition."""
    stack: list[tuple[Any, int, bool]] = [(schema, 1, True)]  # (node, depth, is a schema)
    while stack:
        node, depth, is_schema = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise too_large(f"the JSON schema nests deeper than {MAX_SCHEMA_DEPTH} levels", param,
                            "schema_too_large")
        if isinstance(node, dict):
            if is_schema:
                _check_repetitions(node, param)
            for key, value in node.items():
                if not is_schema or key in _DATA_KEYWORDS:
                    stack.append((value, depth + 1, False))
                elif key in _SCHEMA_MAPS and isinstance(value, dict):
                    stack.extend((sub, depth + 2, True) for sub in value.values())
                else:
                    stack.append((value, depth + 1, True))
        elif isinstance(node, list):
            stack.extend((value, depth + 1, is_schema) for value in node)


_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties", "dependentSchemas"})
"""Keywords whose value maps names to sub-schemas."""
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples", "required"})
"""Keywords whose value is data, not a schema."""


def _check_repetitions(node: dict[str, Any], param: str) -> None:
    for keyword in REPETITION_KEYWORDS:
        if keyword in node:
            _check_repetition(node[keyword], keyword, param)
    for low, high in (("minItems", "maxItems"), ("minLength", "maxLength")):
        if node.get(low, 0) > node.get(high, MAX_SCHEMA_REPETITION):
            raise InvalidRequestError(f"{high} is below {low} in the JSON schema", code="invalid_schema",
                                      param=param)
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        for match in _QUANTIFIER.finditer(pattern):
            low_text, high_text = match.group(1), match.group(2)
            counts = [int(text) for text in (low_text, high_text) if text and len(text) < 8]
            if any(text and len(text) >= 8 for text in (low_text, high_text)) or any(
                    count > MAX_SCHEMA_REPETITION for count in counts):
                raise too_large(f"the pattern {match.group()} repeats more than {MAX_SCHEMA_REPETITION} times",
                                param, "schema_too_large")
            if low_text and high_text and int(high_text) < int(low_text):
                raise InvalidRequestError(f"the pattern's repetition {match.group()} has its maximum below "
                                          "its minimum", code="invalid_schema", param=param)


def _check_repetition(value: Any, keyword: str, param: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidRequestError(f"{keyword} must be a non-negative integer in the JSON schema",
                                  code="invalid_schema", param=param)
    if value > MAX_SCHEMA_REPETITION:
        raise too_large(f"{keyword} is {value} in the JSON schema; at most {MAX_SCHEMA_REPETITION} is supported "
                        "(the grammar would repeat it in full)", param, "schema_too_large")


def _count(branches: int) -> str:
    return f"{branches:,}" if branches < 10**12 else "more than 10^12"


class _OverBudget(Exception):
    pass


@functools.cache
def _bounded_converter() -> type:
    """SchemaConverter with a budget; built on first use, so importing serving does not load llama.cpp."""
    from llama_cpp.llama_grammar import SchemaConverter

    class BoundedConverter(SchemaConverter):  # type: ignore[misc]
        """Stops once it has visited or written too much. Visits bound the exponential case ($refs it
        cannot name as rules are expanded again at every use); bytes bound what it writes."""

        def __init__(self, max_visits: int, max_bytes: int) -> None:
            super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
            self.visits_left = max_visits
            self.bytes_left = max_bytes

        def visit(self, schema: Any, name: str) -> str:
            self.visits_left -= 1
            if self.visits_left < 0:
                raise _OverBudget(f"the JSON schema expands to more than {MAX_SCHEMA_VISITS} sub-schemas "
                                  "(definitions referenced through each other multiply)")
            if not isinstance(schema, dict):
                raise ValueError(f"a schema must be an object, not {type(schema).__name__}")
            return str(super().visit(schema, name))

        def _add_rule(self, name: str, rule: str) -> str:
            self.bytes_left -= len(name) + len(rule) + 5
            if self.bytes_left < 0:
                raise _OverBudget("the JSON schema converts to a grammar larger than this node's limit")
            return str(super()._add_rule(name, rule))

    return BoundedConverter
