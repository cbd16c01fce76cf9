"""A model's process dying costs that model's requests, never the node: a real `p2pai start` process."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from conftest import NodeProcess


def model_pid(node: NodeProcess, model: str) -> int:
    loaded = {m["id"]: m for m in httpx.get(node.url + "/system", timeout=5).json()["loaded_models"]}
    return loaded[model]["pid"]


def crash(pid: int, signum: int) -> None:
    """Freeze the process first, so whatever it serves is surely unfinished, then deliver `signum`."""
    os.kill(pid, signal.SIGSTOP)
    os.kill(pid, signum)
    if signum != signal.SIGKILL:  # SIGKILL ends even a stopped process, and it may be reaped at once
        os.kill(pid, signal.SIGCONT)  # a stopped process takes SIGSEGV only once it runs again


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} is still there")


def model_stats(node: NodeProcess, model: str) -> dict:
    stats = httpx.get(node.url + "/api/p2p", timeout=5).json()["self"]["model_stats"]
    return next(m for m in stats if m["name"] == model)


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGSEGV, signal.SIGKILL])
def test_a_model_process_killed_mid_stream_fails_its_stream_only(start_node, models_dir: Path,
                                                                  signum: int) -> None:
    node = start_node("--models-dir", str(models_dir), "--preload", "--threads", "1", "--no-default-model")
    api = openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    pid = model_pid(node, "tiny")
    other = model_pid(node, "tiny-b")
    stream = api.completions.create(model="tiny", prompt="the people", max_tokens=400, stream=True)
    chunks = iter(stream)
    next(chunks)
    crash(pid, signum)
    with pytest.raises(openai.APIError) as broken:
        for _ in chunks:
            pass
    assert broken.value.body["code"] == "model_crashed"
    assert signal.Signals(signum).name in broken.value.message
    wait_gone(pid)
    # The node and its other model answer at once; the other model's process was untouched.
    assert httpx.get(node.url + "/healthz", timeout=2).status_code == 200
    started = time.monotonic()
    reply = api.completions.create(model="tiny-b", prompt="hello", max_tokens=4)
    assert reply.choices[0].text and time.monotonic() - started < 2
    assert model_pid(node, "tiny-b") == other
    # The crashed model restarts on its next request, in a new process.
    reply = api.completions.create(model="tiny", prompt="hello", max_tokens=4)
    assert reply.usage.completion_tokens == 4
    assert model_pid(node, "tiny") not in (pid, other)
    stats = model_stats(node, "tiny")
    assert stats["crashes"] == 1 and stats["loaded"]
    assert "crashed" in node.log.read_text()


@pytest.mark.e2e
def test_a_non_streamed_request_whose_model_crashes_gets_a_500_json_and_restarts_back_off(
        start_node, models_dir: Path) -> None:
    node = start_node("--models-dir", str(models_dir), "--preload", "--threads", "1", "--no-default-model")
    api = openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    for crashes in (1, 2):
        pid = model_pid(node, "tiny")
        os.kill(pid, signal.SIGSTOP)  # the request below waits in a frozen model
        with ThreadPoolExecutor(1) as pool:
            sent = pool.submit(httpx.post, node.url + "/v1/completions",
                               json={"model": "tiny", "prompt": "hi", "max_tokens": 8}, timeout=30)
            time.sleep(0.3)
            os.kill(pid, signal.SIGKILL)
            answer = sent.result(10)
        assert answer.status_code == 500
        assert answer.json()["error"]["code"] == "model_crashed"
        wait_gone(pid)
        if crashes == 1:  # the first crash: restarted on the next request
            assert api.completions.create(model="tiny", prompt="hello", max_tokens=2).choices[0].text
    # The second crash within minutes: the model waits before it starts again, and says when.
    refused = httpx.post(node.url + "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "model_restarting"
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    time.sleep(int(refused.headers["Retry-After"]) + 0.1)
    assert api.completions.create(model="tiny", prompt="hello", max_tokens=2).choices[0].text
    assert model_stats(node, "tiny")["crashes"] == 2
