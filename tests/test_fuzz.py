"""A bounded fuzzing run against a real node, from its own /openapi.json (bench/fuzz.py runs the long one).

Zero failures: no 5xx, nothing undocumented, every answer (errors included) in
its documented shape, invalid input refused; and afterwards the node answers,
with no model process lost on the way.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
import requests

from fuzzing import MODELS, NODE_FLAGS, campaign, load, member_session, report
from p2pai.token import new_token

pytestmark = pytest.mark.e2e

def _fuzzed_node(start_node, models_dir: Path, token: str, tmp_path: Path):
    """A node on its own copy of the models: the fuzzer may delete a model (DELETE /v1/models/{model})."""
    copy = shutil.copytree(models_dir, tmp_path / "fuzzed-models")
    return start_node("--models-dir", str(copy), "--token", token, *NODE_FLAGS)


def _still_serving(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/healthz").status_code == 200
        assert http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 4}).status_code == 200
        system = http.get("/system").json()
        assert all(model["crashes"] == 0 for model in system["loaded_models"]), system


def test_fuzz_the_client_api(start_node, models_dir: Path, tmp_path: Path) -> None:
    node = _fuzzed_node(start_node, models_dir, new_token(), tmp_path)
    session = requests.Session()
    figures = campaign(load(node.url, session), node.url, session, MODELS, examples=25, seconds=100)
    assert figures.requests > 300
    assert not figures.failures, report(figures)
    _still_serving(node.url)
    assert node.proc.poll() is None


def test_fuzz_the_peer_endpoint_with_signed_requests(start_node, models_dir: Path, tmp_path: Path) -> None:
    token = new_token()
    node = _fuzzed_node(start_node, models_dir, token, tmp_path)
    peer_url = node.swarm()["self"]["address"]
    session = member_session(token, node.peer_id(), tmp_path / "member")
    figures = campaign(load(peer_url, session), peer_url, session, MODELS, examples=15, seconds=50)
    assert figures.requests > 150
    assert 401 not in figures.statuses  # every request was signed as a member signs it
    assert not figures.failures, report(figures)
    _still_serving(node.url)
