"""Token commands, the token's access rules over HTTP, and what `start` prints about the swarm."""

from __future__ import annotations

import json
import logging
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from aiohttp.test_utils import make_mocked_request

from conftest import _client
from p2pai.api.errors import APIError
from p2pai.api.p2p import swarm_token
from p2pai.cli import build_parser
from p2pai.settings import NodeSettings, prepare_data_dir, settings_from_args
from p2pai.swarm.join import resolve_token
from p2pai.token import TokenError, new_token, parse_token
from p2pai.worker import WorkerSettings


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


def test_no_settings_object_shows_a_secret() -> None:
    token = new_token()
    start = build_parser().parse_args(["start", "--token", token, "--api-key", "api-secret", "--admin-key",
                                       "admin-secret"])
    settings = settings_from_args(start)
    worker = WorkerSettings.from_args(build_parser().parse_args(["worker", "--token", token]))
    assert settings.token == worker.node.token == token and settings.admin_keys == ("admin-secret",)
    for shown in (repr(settings), str(settings), repr(worker)):
        assert token not in shown and "api-secret" not in shown and "admin-secret" not in shown, shown


def test_the_token_file_is_read_and_a_file_others_can_read_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = new_token()
    path = tmp_path / "swarm-token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    settings = NodeSettings(data_dir=tmp_path / "data", token_file=path)
    with caplog.at_level(logging.WARNING):
        assert resolve_token(settings).token == token
        assert not caplog.records
        path.chmod(0o644)
        assert resolve_token(settings).token == token
    assert f"the token file {path} is readable by other users" in caplog.text
    assert not (tmp_path / "data" / "token").exists()  # the given token is not replaced by a new one
    with pytest.raises(TokenError, match="not both"):
        resolve_token(NodeSettings(data_dir=tmp_path, token=token, token_file=path))
    with pytest.raises(TokenError, match="cannot read the token file"):
        resolve_token(NodeSettings(data_dir=tmp_path, token_file=tmp_path / "missing"))
    path.write_text("not a token")
    with pytest.raises(TokenError, match=f"the token file {path} does not hold a valid token"):
        resolve_token(settings)


def test_the_data_dir_is_created_private_and_an_open_one_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        prepare_data_dir(tmp_path / "new" / "data")
        assert stat.S_IMODE((tmp_path / "new" / "data").stat().st_mode) == 0o700
        assert not caplog.records
        (tmp_path / "open").mkdir(mode=0o755)
        (tmp_path / "open").chmod(0o755)
        prepare_data_dir(tmp_path / "open")
    assert "is open to other users (mode 755)" in caplog.text


def test_a_node_reads_its_token_from_a_file_and_gives_it_to_an_admin_only(start_node, tmp_path: Path) -> None:
    token = new_token()
    path = tmp_path / "swarm-token"
    path.write_text(token)
    path.chmod(0o600)
    node = start_node("--token-file", str(path), "--admin-key", "root", "--api-key", "user", "--no-default-model",
                      "--models-dir", str(tmp_path / "none"), name="n")
    given = httpx.get(node.url + "/api/p2p/token", headers={"Authorization": "Bearer root"}, timeout=5)
    assert given.status_code == 200 and given.text == token
    refused = httpx.get(node.url + "/api/p2p/token", headers={"Authorization": "Bearer user"}, timeout=5)
    assert refused.status_code == 403
    node.stop()
    log = node.log.read_text()
    assert token not in log
    assert "is open to other users" in log  # the test made the data dir (for the log) with mode 755


async def test_token_is_served_to_loopback_callers_when_no_key_is_set(models_dir: Path, tmp_path: Path) -> None:
    token = new_token()
    async with _client(models_dir, tmp_path, token=token) as client:
        response = await client.get("/api/p2p/token")
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert await response.text() == token


async def test_token_needs_an_admin_key_when_keys_are_set(models_dir: Path, tmp_path: Path) -> None:
    token = new_token()
    async with _client(models_dir, tmp_path, frozenset({"sesame"}), token=token,
                       admin_keys=frozenset({"root"})) as client:
        refused = await client.get("/api/p2p/token")
        assert refused.status == 401
        assert (await refused.json())["error"]["code"] == "invalid_api_key"
        api_key_only = await client.get("/api/p2p/token", headers={"Authorization": "Bearer sesame"})
        assert api_key_only.status == 403
        assert (await api_key_only.json())["error"] == {
            "message": "The swarm token needs an admin key (set with --admin-key), not an API key.",
            "type": "permission_error", "param": None, "code": "forbidden"}
        allowed = await client.get("/api/p2p/token", headers={"Authorization": "Bearer root"})
        assert allowed.status == 200 and await allowed.text() == token
        # An admin key is also an API key.
        assert (await client.get("/v1/models", headers={"X-API-Key": "root"})).status == 200


async def test_api_keys_without_an_admin_key_never_give_the_token(models_dir: Path, tmp_path: Path) -> None:
    async with _client(models_dir, tmp_path, frozenset({"sesame"}), token=new_token()) as client:
        response = await client.get("/api/p2p/token", headers={"Authorization": "Bearer sesame"})
        assert response.status == 403


async def test_an_admin_key_alone_guards_the_token_not_the_api(models_dir: Path, tmp_path: Path) -> None:
    token = new_token()
    async with _client(models_dir, tmp_path, token=token, admin_keys=frozenset({"root"})) as client:
        assert (await client.get("/v1/models")).status == 200
        assert (await client.get("/api/p2p/token")).status == 401  # even from this machine
        assert (await client.get("/api/p2p/token", headers={"Authorization": "Bearer wrong"})).status == 401
        allowed = await client.get("/api/p2p/token", headers={"Authorization": "Bearer root"})
        assert await allowed.text() == token


@pytest.mark.parametrize("header", ["Forwarded", "X-Forwarded-For", "X-Real-IP", "x-forwarded-for"])
async def test_token_is_never_given_through_a_reverse_proxy(models_dir: Path, tmp_path: Path, header: str) -> None:
    """A proxy on this machine connects from loopback on behalf of anyone."""
    async with _client(models_dir, tmp_path, token=new_token()) as client:
        response = await client.get("/api/p2p/token", headers={header: "203.0.113.9"})
        assert response.status == 403
        assert (await response.json())["error"]["type"] == "permission_error"
    async with _client(models_dir, tmp_path, token=new_token(), admin_keys=frozenset({"root"})) as client:
        response = await client.get("/api/p2p/token", headers={header: "for=203.0.113.9",
                                                                "Authorization": "Bearer root"})
        assert response.status == 403


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


def test_max_loaded_and_memory_budget() -> None:
    settings = settings_from_args(build_parser().parse_args(["start", "--max-loaded", "2", "--memory-budget", "1.5"]))
    assert (settings.max_loaded, settings.memory_budget) == (2, 3 << 29)
    assert settings_from_args(build_parser().parse_args(["start"])).max_loaded is None
    for bad in (["--max-loaded", "0"], ["--memory-budget", "-1"], ["--memory-budget", "lots"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["start", *bad])


def test_probe_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probing starts above the gossip's small swarm (16 nodes) unless set; 0 probes in any swarm."""
    default = settings_from_args(build_parser().parse_args(["start"]))
    assert (default.probe_above, default.probe_timeout) == (16, 0.25)
    settings = settings_from_args(build_parser().parse_args(["start", "--probe-above", "0", "--probe-timeout", "1.5"]))
    assert (settings.probe_above, settings.probe_timeout) == (0, 1.5)
    monkeypatch.setenv("P2PAI_PROBE_ABOVE", "3")
    assert settings_from_args(build_parser().parse_args(["start"])).probe_above == 3
    for bad in (["--probe-above", "-1"], ["--probe-above", "many"], ["--probe-timeout", "0"],
                ["--probe-timeout", "nan"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["start", *bad])
