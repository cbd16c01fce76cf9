"""Token commands, the token's access rules over HTTP, and what `start` prints about the swarm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from conftest import _client
from p2pai.api.errors import APIError
from p2pai.api.p2p import swarm_token
from p2pai.token import new_token, parse_token


def p2pai(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "p2pai", *args], capture_output=True, text=True, timeout=60)


def test_token_new_and_inspect_show_public_fields_only() -> None:
    made = p2pai("token", "new")
    assert made.returncode == 0
    token = made.stdout.strip()
    parsed = parse_token(token)
    shown = p2pai("token", "inspect", token)
    assert shown.returncode == 0
    assert json.loads(shown.stdout) == parsed.public_fields()
    assert "secret" not in shown.stdout and token not in shown.stdout


@pytest.mark.parametrize("bad", ["garbage", "dmVyc2lvbjogOQo"])  # the second: version 9
def test_malformed_tokens_are_clear_cli_errors(bad: str, tmp_path: Path) -> None:
    start = ["start", "--token", bad, "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0",
             "--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--peer-listen", "127.0.0.1:0", "--no-mdns"]
    worker = ["worker", "--token", bad, "--data-dir", str(tmp_path), "--p2p-listen", "/ip4/127.0.0.1/tcp/0",
              "--no-mdns"]
    for args in (["token", "inspect", bad], start, worker):
        result = p2pai(*args)
        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr and "error" in result.stderr.lower()


def test_first_start_prints_the_new_token_and_join_command_later_starts_do_not(start_node, tiny_path: Path) -> None:
    node = start_node("--model", str(tiny_path), name="n")
    token = (node.data_dir / "token").read_text().strip()
    node.stop()
    first = node.log.read_text()
    assert f"p2pai start --token {token}" in first
    node.restart()
    node.wait_ready()
    node.stop()
    assert node.log.read_text().count(token) == first.count(token)


async def test_token_is_served_to_loopback_callers_when_no_key_is_set(models_dir: Path, tmp_path: Path) -> None:
    token = new_token()
    async with _client(models_dir, tmp_path, token=token) as client:
        response = await client.get("/api/p2p/token")
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert await response.text() == token


async def test_token_needs_the_api_key_when_one_is_set(models_dir: Path, tmp_path: Path) -> None:
    token = new_token()
    async with _client(models_dir, tmp_path, frozenset({"sesame"}), token=token) as client:
        refused = await client.get("/api/p2p/token")
        assert refused.status == 401
        assert (await refused.json())["error"]["code"] == "invalid_api_key"
        allowed = await client.get("/api/p2p/token", headers={"Authorization": "Bearer sesame"})
        assert allowed.status == 200 and await allowed.text() == token


async def test_token_is_refused_to_other_hosts_when_no_key_is_set(models_dir: Path, tmp_path: Path) -> None:
    # No other address may be used in tests, so the request object carries the remote address.
    async with _client(models_dir, tmp_path, token=new_token()) as client:
        request = make_mocked_request(
            "GET", "/api/p2p/token", app=client.server.app, transport=_Transport(("192.0.2.7", 40000))
        )
        with pytest.raises(APIError) as refused:
            await swarm_token(request)
    assert refused.value.status == 403


async def test_api_p2p_without_a_swarm_is_a_clear_error(client) -> None:
    response = await client.get("/api/p2p")
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "p2p_disabled"


class _Transport:
    def __init__(self, peer: tuple[str, int]) -> None:
        self._peer = peer

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._peer if name == "peername" else default
