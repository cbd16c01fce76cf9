"""The GBNF analyzer against llama.cpp's own parser, and the bounded JSON-schema converter against its original.

Both mirror llama-cpp-python internals (serving/gbnf.py the grammar parser,
serving/grammar.py two methods of its SchemaConverter): these tests fail when
an upgrade changes what they mirror.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2pai.serving.gbnf import GrammarError, GrammarTooLarge, analyze
from p2pai.serving.grammar import _bounded_converter, schema_grammar
from p2pai.serving.limits import MAX_GRAMMAR_DEPTH, MAX_GRAMMAR_RULES, Limits

EXAMPLES = ("ARITHMETIC_GBNF", "C_GBNF", "CHESS_GBNF", "JAPANESE_GBNF", "JSON_ARR_GBNF", "JSON_GBNF", "LIST_GBNF")

ACCEPTED = [
    'root ::= "a" | "b"',
    'root ::= (\n  "a"\n  | "b" # a comment ( with a parenthesis\n)+ [0-9]{2,5} x*\n'
    'x ::= [^"\\\\\\x7F\\x00-\\x1F] | "\\u00e9"',
    'root ::= "x"{ 2 , } "y"{0,3} "z"{4} . [\\-\\]] <[5]> !<[6]>',
    'root ::= item ("," item)*\nitem ::= [a-z]+ | "[" root? "]"',
    "root ::= ( ( ( \"deep\" ) ) )",
]
REFUSED = [
    'root ::= ("a"',
    'root ::= "a")',
    "root ::= other",
    'other ::= "a"',
    'root ::= *"a"',
    'root ::= "unterminated',
    'root ::= [a-',
    'root ::= "\\q"',
    'root ::= "a"{2001}',
    'root ::= root "a" | "b"',
    'root ::= "a" "b"\n  | "c"\nstray',
    "root ::= <[12",
]


@pytest.fixture(scope="module")
def llama_vocab(tiny_path: Path) -> Iterator[Any]:
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(tiny_path).encode(), params)
    yield llama_cpp.llama_model_get_vocab(model)
    llama_cpp.llama_model_free(model)


def llama_parses(vocab: Any, grammar: str) -> bool:
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


def measure(grammar: str) -> Any:
    return analyze(grammar, MAX_GRAMMAR_DEPTH, MAX_GRAMMAR_RULES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_llama_cpp_example_grammars_are_accepted_as_llama_cpp_accepts_them(name: str, llama_vocab: Any) -> None:
    from llama_cpp import llama_grammar

    grammar = getattr(llama_grammar, name)
    stats = measure(grammar)
    assert stats.branches < 100 and stats.depth < 10
    assert llama_parses(llama_vocab, grammar)


@pytest.mark.parametrize("grammar", ACCEPTED)
def test_the_syntax_llama_cpp_accepts(grammar: str, llama_vocab: Any) -> None:
    measure(grammar)
    assert llama_parses(llama_vocab, grammar)


@pytest.mark.parametrize("grammar", REFUSED)
def test_the_syntax_llama_cpp_refuses(grammar: str, llama_vocab: Any) -> None:
    with pytest.raises(GrammarError):
        measure(grammar)
    assert not llama_parses(llama_vocab, grammar)


def test_depth_rules_and_token_ids_are_counted_as_llama_cpp_expands_them() -> None:
    stats = measure('root ::= ("a" ("b" | "c")){2,5} x <[7]>\nx ::= "y"? !<[9]>')
    assert stats.depth == 2
    assert stats.rules == 2 + 2 + (5 - 2) + 1  # named, groups, {2,5} (3 optional copies), ?
    assert stats.token_ids == (7, 9)
    with pytest.raises(GrammarTooLarge):
        analyze("root ::= " + "(" * 11 + '"a"' + ")" * 11, 10, MAX_GRAMMAR_RULES)
    with pytest.raises(GrammarTooLarge):
        analyze('root ::= "a"{0,1500} "b"{0,1500}', MAX_GRAMMAR_DEPTH, 2000)


def test_branches_multiply_through_nested_rules_and_add_through_empty_ones() -> None:
    assert measure('root ::= "a" | "b" | "c"').branches == 4  # three stacks, plus the rule entered
    nested = "\n".join(f"r{i} ::= " + " | ".join([f"r{i + 1}"] * 10) for i in range(4)).replace("r0 ::=", "root ::=")
    assert measure(nested + '\nr4 ::= "a"').branches > 10**4
    assert measure('root ::= x{0,100}\nx ::= "a"?').branches > 100  # each optional copy opens its own stack
    assert measure('root ::= x{0,100}\nx ::= "a"').branches < 5  # a copy that cannot be empty opens one


def test_characters_no_token_can_produce_are_refused() -> None:
    for grammar in ('root ::= "\\x00"', "root ::= [\\x00]", 'root ::= "\\U00110000"', "root ::= [^\\x01-\\U0010FFFF]",
                    "root ::= [z-a]"):
        with pytest.raises(GrammarError, match="produce"):
            measure(grammar)
    measure('root ::= [^"\\\\\\x7F\\x00-\\x1F]')  # excludes U+0000 among others: fine


# The bounded converter


SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"},
                                      "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                                               "maxItems": 4}},
     "required": ["name"]},
    {"$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}}},
     "type": "array", "items": {"$ref": "#/$defs/Point"}},
    {"anyOf": [{"type": "string", "pattern": "^[a-z]{2,4}$"}, {"enum": ["a", 1, None]}]},
    {"type": "object"},
]


def test_the_converter_methods_it_overrides_are_still_there() -> None:
    from llama_cpp.llama_grammar import SchemaConverter

    assert list(inspect.signature(SchemaConverter.visit).parameters) == ["self", "schema", "name"]
    assert list(inspect.signature(SchemaConverter._add_rule).parameters) == ["self", "name", "rule"]
    assert {"prop_order", "allow_fetch", "dotall", "raw_pattern"} <= set(
        inspect.signature(SchemaConverter.__init__).parameters)


@pytest.mark.parametrize("schema", SCHEMAS)
def test_the_bounded_converter_writes_what_llama_cpp_python_writes(schema: dict[str, Any], llama_vocab: Any) -> None:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    expected = json_schema_to_gbnf(json.dumps(schema)).replace(r'[^"\\]', r'[^"\\\x7F\x00-\x1F]')
    grammar = schema_grammar(schema, Limits(), n_vocab=1000, param="schema")
    assert grammar == expected
    assert llama_parses(llama_vocab, grammar)


def test_the_bounded_converter_stops_at_its_budget() -> None:
    converter = _bounded_converter()(max_visits=3, max_bytes=10**6)
    schema = {"type": "object", "properties": {k: {"type": "string"} for k in "abcde"}}
    with pytest.raises(Exception, match="sub-schemas"):
        converter.visit(schema, "")
    converter = _bounded_converter()(max_visits=100, max_bytes=50)
    with pytest.raises(Exception, match="larger than"):
        converter.visit(schema, "")
