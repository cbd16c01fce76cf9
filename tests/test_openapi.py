"""The OpenAPI 3.1 documents: valid, complete (every registered route), served by both apps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from p2pai.api import openapi
from p2pai.api.app import create_app
from p2pai.api.peer_app import create_peer_app, peer_guard
from p2pai.api.state import NodeState
from p2pai.models.catalog import build_catalog
from p2pai.routing import peer_auth
from p2pai.serving.manager import ModelManager

KEY = b"k" * 32
NODE = "12D3KooWTestNode"  # a peer id in form (base58)


@pytest.fixture
def state(models_dir: Path, tmp_path: Path) -> NodeState:
    return NodeState(ModelManager(build_catalog(models_dir, tmp_path, [])), node_id=NODE, version="test",
                     ready=True)


@pytest.mark.parametrize("kind", ["client", "peer"])
def test_the_documents_are_valid_openapi_3_1(kind: openapi.Document) -> None:
    doc = openapi.document(kind)
    assert doc["openapi"] == "3.1.0"
    validate(doc)


def _routes(app) -> set[tuple[str, str]]:
    return {(route.method.lower(), route.resource.canonical) for route in app.router.routes() if route.method != "HEAD"}


def _documented(kind: openapi.Document) -> set[tuple[str, str]]:
    return {(method, path) for path, item in openapi.document(kind)["paths"].items() for method in item
            if method != "parameters"}


def test_every_route_of_each_app_is_documented_and_nothing_else(state: NodeState) -> None:
    assert _routes(create_app(state)) == _documented("client")
    assert _routes(create_peer_app(state, peer_guard(KEY, NODE, None))) == _documented("peer")


def test_the_peer_document_requires_the_signature_headers_on_every_operation() -> None:
    names = set(peer_auth.SIGNED_HEADERS)
    for item in openapi.document("peer")["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict):
                headers = {p["name"] for p in operation["parameters"] if p["in"] == "header" and p["required"]}
                assert names <= headers
                assert "401" in operation["responses"]


def test_streamed_operations_document_their_events_and_every_error_has_its_family_shape() -> None:
    doc = openapi.document("client")
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    event = chat["responses"]["200"]["content"]["text/event-stream"]["schema"]["properties"]["data"]
    assert event["anyOf"][1]["contentSchema"]["anyOf"][0] == {"$ref": "#/components/schemas/ChatCompletionChunk"}
    for item in doc["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict):
                anthropic = operation["operationId"].startswith(("createMessage", "countMessageTokens"))
                for status, response in operation["responses"].items():
                    if status[0] in "45":
                        schema = response["content"]["application/json"]["schema"]["$ref"]
                        assert ("anthropic" in schema) == anthropic and schema.endswith("ErrorResponse")


async def test_both_apps_serve_their_document(state: NodeState) -> None:
    client = TestClient(TestServer(create_app(state), host="127.0.0.1"))
    peer = TestClient(TestServer(create_peer_app(state, peer_guard(KEY, NODE, None)), host="127.0.0.1"))
    async with client, peer:
        response = await client.get("/openapi.json")
        assert response.status == 200 and await response.json() == openapi.document("client")
        assert (await peer.get("/openapi.json")).status == 401  # members only, as everything there
        headers = peer_auth.sign(KEY, "12D3KooWPeer", NODE, "GET", "/openapi.json", b"")
        signed = await peer.get("/openapi.json", headers=headers)
        assert signed.status == 200
        assert json.loads(await signed.read()) == openapi.document("peer")
    await state.manager.close()
