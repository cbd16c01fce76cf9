"""The README's quick start, as a new user runs it: a node with the built-in models, each of the
quick start's `curl` requests as curl sends it, and examples/openai_client.py."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from p2pai.models.builtin import BUILTIN_MAX_TOKENS, SMOLLM2
from speech import JFK

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).parent.parent
QUICK_START_SECONDS = 30  # the bound on 2 cores, model load included
README_URL = "http://127.0.0.1:8080"


def readme_commands() -> list[list[str]]:
    """The shell commands of the quick start's code blocks, as the shell splits them."""
    quick_start = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands, pending = [], ""
    for block in re.findall(r"```sh\n(.*?)```", quick_start, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            pending += line + "\n"
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # a quote spans lines
                continue
            pending = ""
            if words:
                commands.append(words)
    return commands


def curl_requests() -> list[tuple[str, bytes]]:
    """The path and body of each `curl URL -d BODY` of the quick start."""
    requests = []
    for words in readme_commands():
        if words[0] != "curl" or "-F" in words:
            continue
        assert len(words) == 4 and words[2] == "-d" and words[1].startswith(README_URL), words
        requests.append((words[1].removeprefix(README_URL), words[3].encode()))
    return requests


def curl_uploads() -> list[tuple[str, dict[str, str], str]]:
    """The path, form fields and file name of each `curl URL -F NAME=VALUE... -F file=@FILE`."""
    uploads = []
    for words in readme_commands():
        if words[0] != "curl" or "-F" not in words:
            continue
        assert words[1].startswith(README_URL) and words[2::2] == ["-F"] * (len(words) // 2 - 1), words
        fields = dict(field.split("=", 1) for field in words[3::2])
        uploads.append((words[1].removeprefix(README_URL), fields, fields.pop("file").removeprefix("@")))
    return uploads


def curl(node, path: str, body: bytes, timeout: float) -> httpx.Response:
    """What `curl URL -d BODY` sends: a POST with curl's form content type, not JSON's."""
    return httpx.post(node.url + path, content=body, timeout=timeout,
                      headers={"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "curl/8"})


def test_quick_start_answers_in_seconds_and_every_example_runs(start_node) -> None:
    (path, body), *others = curl_requests()
    request = json.loads(body)
    assert path == "/v1/chat/completions" and request["model"] == SMOLLM2.name and "max_tokens" not in request
    assert {p for p, _ in others} == {"/v1/embeddings", "/v1/rerank"}
    node = start_node("--threads", "2")
    started = time.monotonic()
    reply = curl(node, path, body, QUICK_START_SECONDS)
    elapsed = time.monotonic() - started
    assert reply.status_code == 200, reply.text
    choice, usage = reply.json()["choices"][0], reply.json()["usage"]
    assert choice["finish_reason"] == "stop" or usage["completion_tokens"] == BUILTIN_MAX_TOKENS
    # What it says is the model's business: SmolLM2 135M (Q4_1) names Paris in about 6 answers of 10
    # at the default sampling, and greedy decoding answers in French and never stops.
    assert choice["message"]["content"].strip()
    assert elapsed < QUICK_START_SECONDS

    for path, body in others:
        reply = curl(node, path, body, 60)
        assert reply.status_code == 200, (path, reply.text)
    uploads = curl_uploads()
    assert {p for p, _, _ in uploads} == {"/v1/audio/transcriptions", "/v1/audio/translations"}
    for path, fields, _ in uploads:  # the README's own recording stands for the user's file
        reply = httpx.post(node.url + path, data=fields, files={"file": ("speech.wav", JFK.read_bytes())}, timeout=120)
        assert reply.status_code == 200, (path, reply.text)
        assert "country" in reply.text.lower()
    example = next(words for words in readme_commands() if "examples/openai_client.py" in words[-1])
    assert example == [".venv/bin/python", "examples/openai_client.py"]
    run = subprocess.run([sys.executable, str(ROOT / example[1]), "--base-url", node.url + "/v1"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "chat:" in run.stdout and "embeddings: [576, 576] dimensions" in run.stdout


def test_a_request_without_model_goes_to_the_default(start_node) -> None:
    node = start_node("--threads", "2")
    reply = httpx.post(node.url + "/v1/chat/completions", timeout=QUICK_START_SECONDS,
                       json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == SMOLLM2.name
