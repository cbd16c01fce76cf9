"""Requests built to crash or stall llama.cpp get a 4xx in OpenAI's shape, fast, and the node keeps answering.

Each attack here took a model process (before it had one: the whole node) down
or stalled it before validation refused it; see FACTS.md and serving/gbnf.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestClient

from conftest import _client
from p2pai.serving.limits import (
    MAX_GRAMMAR_DEPTH,
    MAX_LOGIT_BIAS,
    MAX_N,
    MAX_STOP,
    MAX_STOP_LENGTH,
    MAX_TOOLS,
    Limits,
)
from p2pai.serving.tools import parse_tool_calls
from p2pai.token import new_token
from test_api import assert_openai_error
from test_swarm import online_peers, wait_for

USER = [{"role": "user", "content": "hello world"}]
OUT_OF_RANGE = [100_000_000, -1, 2**31, 2**32 + 1]
ANSWER_WITHIN_S = 10.0


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": USER, "max_tokens": 4, **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "prompt": "hello", "max_tokens": 4, **fields}


def tool(parameters: dict[str, Any], name: str = "f") -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


async def refused(client: TestClient, path: str, body: dict[str, Any] | str, param: str | None = None,
                  code: str | None = None, status: int = 400) -> dict[str, Any]:
    """Send, expect OpenAI's error shape with ``status`` quickly; then the node must still generate."""
    started = time.monotonic()
    data = body if isinstance(body, str) else json.dumps(body)
    response = await client.post(path, data=data, headers={"Content-Type": "application/json"})
    error = await response.json()
    assert response.status == status, error
    assert time.monotonic() - started < ANSWER_WITHIN_S
    assert_openai_error(error, code)
    if param is not None:
        assert error["error"]["param"] == param, error
    still = await client.post("/v1/completions", json=completion())
    assert still.status == 200, await still.text()
    return error["error"]


# Token ids, wherever a request may give them


@pytest.mark.parametrize("token", OUT_OF_RANGE)
async def test_completion_prompt_ids_outside_the_vocabulary(client: TestClient, token: int) -> None:
    await refused(client, "/v1/completions", completion(prompt=[1, token]), "prompt", "invalid_token_id")
    await refused(client, "/v1/completions", completion(prompt=[[1, 2], [3, token]]), "prompt", "invalid_token_id")
    await refused(client, "/v1/completions", completion(prompt=[token], stream=True), "prompt", "invalid_token_id")
    await refused(client, "/v1/completions", completion(prompt=[token], suffix="x"), "prompt", "invalid_token_id")


@pytest.mark.parametrize("token", OUT_OF_RANGE)
async def test_embedding_input_ids_outside_the_vocabulary(client: TestClient, token: int) -> None:
    await refused(client, "/v1/embeddings", {"model": "tiny", "input": [token]}, "input", "invalid_token_id")
    await refused(client, "/v1/embeddings", {"model": "tiny", "input": [[5], [token, 5]]}, "input",
                  "invalid_token_id")


async def test_token_ids_within_the_vocabulary_still_work(client: TestClient) -> None:
    tokens = (await (await client.post("/v1/tokenize", json={"model": "tiny", "content": "hello"})).json())["tokens"]
    assert (await client.post("/v1/completions", json=completion(prompt=tokens))).status == 200
    assert (await client.post("/v1/embeddings", json={"model": "tiny", "input": [tokens, tokens]})).status == 200
    assert (await client.post("/v1/chat/completions", json=chat(logit_bias={str(tokens[0]): 5}))).status == 200


async def test_a_token_prompt_longer_than_the_context_is_refused_before_any_work(client: TestClient) -> None:
    await refused(client, "/v1/completions", completion(prompt=[5] * 100_000), "prompt", "context_length_exceeded")
    await refused(client, "/v1/embeddings", {"model": "tiny", "input": [[5] * 100_000]}, "input",
                  "context_length_exceeded")


@pytest.mark.parametrize("bias", [{"100000000": 1}, {"-1": 1}, {"01": 1}, {"x": 1}, {"5": 101}, {"5": -100.5}])
async def test_logit_bias_keys_are_token_ids_and_biases_lie_within_100(client: TestClient,
                                                                       bias: dict[str, float]) -> None:
    error = await refused(client, "/v1/chat/completions", chat(logit_bias=bias))
    assert error["param"].startswith("logit_bias")
    await refused(client, "/v1/completions", completion(logit_bias=bias))


@pytest.mark.parametrize("grammar", ["root ::= <[100000000]>", "root ::= !<[4294967297]>", "root ::= \"a\" <[99999]>"])
async def test_grammar_token_ids_outside_the_vocabulary(client: TestClient, grammar: str) -> None:
    await refused(client, "/v1/chat/completions", chat(grammar=grammar), "grammar", "invalid_token_id")
    await refused(client, "/v1/completions", completion(grammar=grammar), "grammar", "invalid_token_id")


# Grammars that overflow, stall or abort llama.cpp


@pytest.mark.parametrize(("name", "grammar"), [
    ("100,000 nested groups (recursive parser: segfault)", "root ::= " + "(" * 100_000 + '"a"' + ")" * 100_000),
    ("100,000 chained rules (recursive left-recursion check: segfault)",
     "root ::= r1\n" + "".join(f"r{i} ::= r{i + 1}\n" for i in range(1, 100_000)) + 'r100000 ::= "a"'),
    ("8 levels of 10 alternatives (10^8 parse stacks: stalls)",
     "\n".join([f"r{i} ::= " + " | ".join([f"r{i + 1}"] * 10) for i in range(8)]).replace("r0 ::=", "root ::=")
     + '\nr8 ::= "a"'),
    ("nested repetitions of an optional (stalls)", 'root ::= r0\nr0 ::= r1{0,1999}\nr1 ::= r2{0,1999}\nr2 ::= "a"?'),
    ("100,000 alternatives (quadratic stack setup: 28 s)", "root ::= " + " | ".join(['"a"'] * 100_000)),
])
async def test_grammars_that_crash_or_stall_llama_cpp_are_too_large(client: TestClient, name: str,
                                                                    grammar: str) -> None:
    error = await refused(client, "/v1/completions", completion(grammar=grammar), "grammar", "grammar_too_large")
    assert "grammar" in error["message"]


@pytest.mark.parametrize(("name", "grammar"), [
    ("a maximum below the minimum (llama.cpp expands 2^64 rules)", 'root ::= "a"{5,3}'),
    ("left recursion through a rule that can be empty (endless stack growth)",
     'root ::= a "x"\na ::= b a "y" | "z"\nb ::= c\nc ::= "q"?'),
    ("U+0000, which no token produces (abort)", r'root ::= "\x00"'),
    ("a class of U+0000 only (abort)", r"root ::= [\x00]"),
    ("beyond U+10FFFF (abort)", r'root ::= "\UFFFFFFFF"'),
    ("an undefined rule", "root ::= other"),
    ("unbalanced parentheses", 'root ::= ("a"'),
])
async def test_grammars_llama_cpp_cannot_take_are_invalid(client: TestClient, name: str, grammar: str) -> None:
    await refused(client, "/v1/chat/completions", chat(grammar=grammar), "grammar", "invalid_grammar")


async def test_a_grammar_bigger_than_the_nodes_limit_is_refused(models_dir: Path, tmp_path: Path) -> None:
    async with _client(models_dir, tmp_path, limits=Limits(max_grammar_bytes=1000)) as client:
        grammar = "root ::= " + " ".join(['"a"'] * 400)
        await refused(client, "/v1/completions", completion(grammar=grammar), "grammar", "grammar_too_large")
        assert (await client.post("/v1/completions", json=completion(grammar=grammar[:900]))).status == 200


async def test_nesting_up_to_the_limit_is_accepted(client: TestClient) -> None:
    deep = "root ::= " + "(" * MAX_GRAMMAR_DEPTH + '"a"' + ")" * MAX_GRAMMAR_DEPTH
    response = await client.post("/v1/completions", json=completion(grammar=deep, max_tokens=2))
    assert response.status == 200, await response.text()
    assert (await response.json())["choices"][0]["text"] == "a"
    await refused(client, "/v1/completions", completion(grammar="root ::= (" + deep[9:] + ")"), "grammar",
                  "grammar_too_large")


# JSON schemas: expanded in full by the converter


@pytest.mark.parametrize("schema", [
    {"type": "array", "items": {"type": "string"}, "minItems": 10**9},
    {"type": "array", "items": {"type": "string"}, "maxItems": 10**9},
    {"type": "object", "properties": {"s": {"type": "string", "maxLength": 10**9}}},
    {"type": "object", "properties": {"s": {"type": "string", "minLength": 10**6}}},
    {"type": "string", "pattern": "^a{1000000000}$"},
    {"type": "string", "pattern": "^(ab){2,99999999999999}$"},
])
async def test_huge_repetitions_in_a_schema_are_refused_fast(client: TestClient, schema: dict[str, Any]) -> None:
    await refused(client, "/v1/chat/completions", chat(response_format=json_schema(schema)),
                  "response_format.json_schema.schema", "schema_too_large")
    error = await refused(client, "/v1/chat/completions",
                          chat(tools=[tool(schema)], tool_choice="required"), code="schema_too_large")
    assert error["param"] == "tools[0].function.parameters"


async def test_tool_parameters_are_bounded_even_when_no_call_is_forced(client: TestClient) -> None:
    schema = {"type": "array", "minItems": 10**9}
    await refused(client, "/v1/chat/completions", chat(tools=[tool(schema)]), "tools[0].function.parameters",
                  "schema_too_large")


async def test_definitions_that_multiply_through_refs_are_refused_fast(client: TestClient) -> None:
    depth = 30  # 2^30 expansions: the converter took 18 s at 20
    defs = {f"l_{i}": {"anyOf": [{"$ref": f"#/$defs/l_{i + 1}"},
                                 {"type": "array", "items": {"$ref": f"#/$defs/l_{i + 1}"}}]} for i in range(depth)}
    defs[f"l_{depth}"] = {"type": "string"}
    schema = {"$defs": defs, "type": "object", "properties": {"x": {"$ref": "#/$defs/l_0"}}}
    await refused(client, "/v1/chat/completions", chat(response_format=json_schema(schema)),
                  "response_format.json_schema.schema", "schema_too_large")


@pytest.mark.parametrize("schema", [
    {"type": "array", "minItems": 5, "maxItems": 3},
    {"type": "array", "minItems": -1},
    {"type": "string", "maxLength": "ten"},
    {"type": "string", "pattern": "^a{5,3}$"},
    {"$ref": "https://example.com/schema.json"},
])
async def test_schemas_the_converter_cannot_take_are_invalid(client: TestClient, schema: dict[str, Any]) -> None:
    await refused(client, "/v1/chat/completions", chat(response_format=json_schema(schema)),
                  "response_format.json_schema.schema", "invalid_schema")


async def test_a_deep_schema_is_refused(client: TestClient) -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(40):  # 80 levels of JSON, within what the body parser takes
        schema = {"type": "object", "properties": {"a": schema}}
    await refused(client, "/v1/chat/completions", chat(response_format=json_schema(schema)),
                  "response_format.json_schema.schema", "schema_too_large")


async def test_schemas_bigger_than_the_nodes_limit_are_refused(models_dir: Path, tmp_path: Path) -> None:
    properties = {f"p{i}": {"type": "string", "description": "x" * 50} for i in range(50)}
    schema = {"type": "object", "properties": properties}
    async with _client(models_dir, tmp_path, limits=Limits(max_schema_bytes=2000)) as client:
        await refused(client, "/v1/chat/completions", chat(tools=[tool(schema)]), code="schema_too_large")


async def test_sensible_schemas_still_constrain_the_output(client: TestClient) -> None:
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 8},
                                                        "maxItems": 3},
                                               "minItems": {"enum": [{"maxLength": "not a keyword here"}]}},
              "required": ["tags"]}
    response = await client.post("/v1/chat/completions", json=chat(response_format=json_schema(schema),
                                                                   max_tokens=60))
    assert response.status == 200, await response.text()


# The body and its counts


async def test_a_body_nested_deeper_than_the_json_parser_takes_is_a_400(client: TestClient) -> None:
    for depth in (300, 100_000):
        body = '{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "metadata": ' + \
               "[" * depth + "]" * depth + "}"
        await refused(client, "/v1/chat/completions", body, code="invalid_json")
        schema = '{"type": "json_schema", "json_schema": {"name": "x", "schema": ' + '{"a": ' * depth + "1" + \
                 "}" * depth + "}}"
        await refused(client, "/v1/chat/completions",
                      '{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "response_format": '
                      + schema + "}", code="invalid_json")


@pytest.mark.parametrize("body", [
    chat(n=MAX_N + 1),
    chat(stop=["x"] * (MAX_STOP + 1)),
    chat(stop="x" * (MAX_STOP_LENGTH + 1)),
    chat(stop=["x" * (MAX_STOP_LENGTH + 1)]),
    chat(logit_bias={str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)}),
    chat(tools=[tool({"type": "object"}, f"f{i}") for i in range(MAX_TOOLS + 1)]),
    chat(seed=2**64),
    chat(temperature=float("inf")),
    chat(model="m" * 1000),
])
async def test_fixed_counts_and_ranges(client: TestClient, body: dict[str, Any]) -> None:
    await refused(client, "/v1/chat/completions", json.dumps(body).replace("Infinity", "1e400"))


async def test_an_integral_number_is_an_integer_as_in_json_schema(client: TestClient) -> None:
    assert (await client.post("/v1/completions", json=completion(prompt=[5.0, 6], n=2.0, max_tokens=3.0))).status == 200
    for body in (completion(n=2.5), completion(max_tokens="3"), completion(prompt=[5.5])):
        await refused(client, "/v1/completions", body)


async def test_counts_past_the_nodes_limits(models_dir: Path, tmp_path: Path) -> None:
    async with _client(models_dir, tmp_path, limits=Limits(max_prompts=3, max_messages=3)) as client:
        await refused(client, "/v1/completions", completion(prompt=["a"] * 4), "prompt", "request_too_large")
        await refused(client, "/v1/completions", completion(prompt=[[5]] * 4), "prompt", "request_too_large")
        await refused(client, "/v1/embeddings", {"model": "tiny", "input": ["a"] * 4}, "input", "request_too_large")
        await refused(client, "/v1/chat/completions", chat(messages=USER * 4), "messages", "request_too_large")
        assert (await client.post("/v1/completions", json=completion(prompt=["a"] * 3))).status == 200


def test_model_output_nested_deeper_than_json_takes_is_text_not_a_tool_call() -> None:
    assert parse_tool_calls("[" * 5000, ("f",)) == []
    assert parse_tool_calls('<tool_call>{"name": "f", "arguments": ' + "[" * 5000 + "</tool_call>", ("f",)) == []


# A real node process


def attacks() -> list[tuple[str, dict[str, Any] | str]]:
    """One request of each kind that took a node down before validation."""
    deep = "[" * 100_000 + "]" * 100_000
    return [
        ("/v1/completions", completion(prompt=[100_000_000])),
        ("/v1/completions", completion(prompt=[[1], [-1]])),
        ("/v1/embeddings", {"model": "tiny", "input": [-5]}),
        ("/v1/chat/completions", chat(grammar="root ::= " + "(" * 100_000 + '"a"' + ")" * 100_000)),
        ("/v1/chat/completions", chat(grammar="root ::= <[100000000]>")),
        ("/v1/chat/completions", chat(response_format=json_schema({"type": "array", "minItems": 10**9}))),
        ("/v1/chat/completions", chat(tools=[tool({"type": "string", "maxLength": 10**9})], tool_choice="required")),
        ("/v1/chat/completions", chat(logit_bias={"100000000": 1})),
        ("/v1/chat/completions", json.dumps(chat())[:-1] + ', "metadata": ' + deep + "}"),
    ]


def send_attacks(url: str, headers: dict[str, str] | None = None) -> None:
    """Every attack gets a 4xx in OpenAI's shape, fast."""
    with httpx.Client(base_url=url, timeout=30, headers=headers) as http:
        for path, body in attacks():
            started = time.monotonic()
            response = http.post(path, **({"content": body, "headers": {"Content-Type": "application/json"}}
                                           if isinstance(body, str) else {"json": body}))
            assert 400 <= response.status_code < 500, response.text
            assert time.monotonic() - started < ANSWER_WITHIN_S
            assert_openai_error(response.json())


def assert_serving(url: str, crashes: list[int]) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/healthz").status_code == 200
        assert http.post("/v1/completions", json=completion()).status_code == 200
        system = http.get("/system").json()
        assert [model["crashes"] for model in system["loaded_models"]] == crashes


def test_a_node_process_refuses_every_attack_and_keeps_serving(start_node, models_dir: Path) -> None:
    node = start_node("--models-dir", str(models_dir), "--no-default-model")
    send_attacks(node.url)
    assert_serving(node.url, [0])
    assert node.proc.poll() is None


def test_attacks_through_an_entry_node_leave_every_node_of_the_swarm_up(start_node, models_dir: Path) -> None:
    token = new_token()
    entry = start_node("--token", token, "--no-default-model", name="entry")
    servers = [start_node("--token", token, "--model", str(models_dir / "tiny.gguf"), "--threads", "1",
                          "--bootstrap", entry.bootstrap_addr(), "--no-default-model", name=name)
               for name in ("b", "c")]
    wait_for(lambda: len(online_peers(entry)) == 2 and all(
        "tiny" in peer["models"] for peer in online_peers(entry).values()), 20.0)
    send_attacks(entry.url)  # routed as the entry chooses
    for server in servers:  # and to each node in turn
        send_attacks(entry.url, {"X-P2PAI-Node": server.peer_id()})
    for node in (entry, *servers):
        assert node.proc.poll() is None
    for server in servers:
        assert_serving(server.url, [0])
    assert_serving(entry.url, [])  # it still routes
    for peer in online_peers(entry).values():  # nothing was lost on the way, no model died
        assert peer["metrics"]["lost"] == 0 and peer["metrics"]["crashed"] == 0, peer["metrics"]
