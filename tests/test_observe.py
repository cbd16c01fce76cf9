"""GET /metrics, GET /api/traces and POST /api/traces/clear on the real node app, in-process (a real tiny
llama.cpp model). Forwarded requests and their hops are in test_observe_swarm.py."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from aiohttp.test_utils import TestClient

from conftest import _client
from metrics_helpers import Samples
from p2pai.metrics import OTHER, Bounded

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def scrape(client: TestClient, headers: dict[str, str] | None = None) -> Samples:
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return Samples(await response.text())


async def test_metrics_move_as_a_model_serves(client: TestClient) -> None:
    before = await scrape(client)
    for stream in (False, True):
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
        assert response.status == 200
        await response.read()
    after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("p2pai_model_requests_total", model="tiny", task="chat") == 2
    assert moved("p2pai_model_completion_tokens_total", model="tiny") == 8
    assert moved("p2pai_model_prompt_tokens_total", model="tiny") > 0
    assert moved("p2pai_model_time_to_first_token_seconds_count", model="tiny") == 2
    assert moved("p2pai_model_request_duration_seconds_count", model="tiny") == 2
    assert after.value("p2pai_model_loaded", model="tiny") == 1
    assert after.value("p2pai_model_slots", model="tiny") == 4
    assert after.value("p2pai_model_decode_tokens_per_second", model="tiny") > 0
    assert after.value("p2pai_model_loads_total", model="tiny") >= 1
    # LocalAI's histogram, by route: the two chats and the first scrape (never /metrics itself).
    assert moved("api_call_count", method="POST", path="/v1/chat/completions") == 2
    assert after.labels("api_call_count", "path") >= {"/v1/chat/completions"}
    assert "/metrics" not in after.labels("api_call_count", "path")


async def test_api_call_is_labelled_by_route_never_by_raw_path(client: TestClient) -> None:
    for name in ("a", "b", "c"):
        assert (await client.get(f"/v1/models/made-up-{name}")).status == 404
        assert (await client.get(f"/no/such/path/{name}")).status == 404
    paths = (await scrape(client)).labels("api_call_count", "path")
    assert "/v1/models/{model}" in paths and "unmatched" in paths
    assert not any("made-up" in path or "/no/such" in path for path in paths)


def test_a_label_takes_a_bounded_number_of_values() -> None:
    label = Bounded(limit=3)
    assert [label(v) for v in ("a", "b", "c", "d", "a", "e")] == ["a", "b", "c", OTHER, "a", OTHER]


async def test_traces_list_requests_newest_first_with_secrets_redacted(models_dir: Path, tmp_path: Path) -> None:
    async with _client(models_dir, tmp_path, frozenset({"sesame"}), admin_keys=frozenset({"root"})) as client:
        user = {"Authorization": "Bearer sesame"}
        admin = {"Authorization": "Bearer root"}
        for tokens in (2, 3):
            assert (await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": tokens},
                                      headers=user)).status == 200
        assert (await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=user)).status == 404
        assert (await client.get("/api/traces", headers=user)).status == 403  # traces show every client's requests
        assert (await client.get("/api/traces")).status == 401
        assert (await client.post("/v1/chat/completions", json=CHAT)).status == 401  # refused: not traced
        response = await client.get("/api/traces", headers=admin)
        assert response.status == 200
        assert response.headers["X-Total-Count"] == "3"
        traces = await response.json()
        assert [t["response"]["status"] for t in traces] == [404, 200, 200]  # newest first; GETs are not traced
        newest_ok = traces[1]
        assert newest_ok["request"]["method"] == "POST" and newest_ok["request"]["path"] == "/v1/chat/completions"
        assert newest_ok["request"]["headers"]["Authorization"] == ["[redacted]"]
        assert "sesame" not in json.dumps(traces)
        assert newest_ok["served_by"] == "test-node" and newest_ok["hops"] == []
        assert newest_ok["duration"] > 0 and newest_ok["timestamp"].endswith("Z")
        assert newest_ok["request"]["body"] is None and newest_ok["request"]["body_bytes"] > 0  # no --trace-bodies
        assert int(traces[1]["id"]) > int(traces[2]["id"])

        page = await (await client.get("/api/traces?limit=1&offset=1", headers=admin)).json()
        assert [t["id"] for t in page] == [traces[1]["id"]]
        assert (await client.post("/api/traces/clear", headers=user)).status == 403
        assert (await client.post("/api/traces/clear", headers=admin)).status == 204
        assert await (await client.get("/api/traces", headers=admin)).json() == []


async def test_bodies_are_kept_only_with_trace_bodies(models_dir: Path, tmp_path: Path) -> None:
    async with _client(models_dir, tmp_path, trace_bodies=True) as client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
        summary = (await (await client.get("/api/traces")).json())[0]
        assert summary["request"]["body"] is None  # a list leaves bodies out unless full=true, as LocalAI's does
        full = (await (await client.get("/api/traces?full=true")).json())[0]
        assert json.loads(base64.b64decode(full["request"]["body"])) == CHAT
        answer = json.loads(base64.b64decode(full["response"]["body"]))
        assert answer["object"] == "chat.completion"
        assert full["response"]["body_bytes"] == len(base64.b64decode(full["response"]["body"]))


async def test_metrics_are_guarded_like_the_rest_of_the_api(keyed_client: TestClient) -> None:
    assert (await keyed_client.get("/metrics")).status == 401
    await scrape(keyed_client, {"Authorization": "Bearer sesame"})
