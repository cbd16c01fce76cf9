"""The README's quick start, as a new user runs it: a node with the built-in models, the README's
own `curl` request, and examples/openai_client.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from p2pai.models.builtin import BUILTIN_MAX_TOKENS, SMOLLM2

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).parent.parent
QUICK_START_SECONDS = 30  # the bound on 2 cores, model load included


def readme_request() -> tuple[str, dict]:
    """The path and body of the quick start's `curl` command."""
    quick_start = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"curl (http://127\.0\.0\.1:8080(\S+)) \\\n\s+-d '([^']+)'", quick_start)
    assert command, "the quick start has no curl request"
    return command.group(2), json.loads(command.group(3))


def test_quick_start_answers_in_seconds_and_the_example_runs(start_node) -> None:
    path, body = readme_request()
    assert body["model"] == SMOLLM2.name and "max_tokens" not in body
    node = start_node("--threads", "2")
    started = time.monotonic()
    reply = httpx.post(node.url + path, json=body, timeout=QUICK_START_SECONDS)
    elapsed = time.monotonic() - started
    assert reply.status_code == 200, reply.text
    choice, usage = reply.json()["choices"][0], reply.json()["usage"]
    assert choice["finish_reason"] == "stop" or usage["completion_tokens"] == BUILTIN_MAX_TOKENS
    assert "Paris" in choice["message"]["content"]
    assert elapsed < QUICK_START_SECONDS

    example = subprocess.run([sys.executable, str(ROOT / "examples" / "openai_client.py"),
                              "--base-url", node.url + "/v1"], capture_output=True, text=True, timeout=120)
    assert example.returncode == 0, example.stderr
    assert "chat:" in example.stdout and "embeddings: [576, 576] dimensions" in example.stdout


def test_a_request_without_model_goes_to_the_default(start_node) -> None:
    node = start_node("--threads", "2")
    reply = httpx.post(node.url + "/v1/chat/completions", timeout=QUICK_START_SECONDS,
                       json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == SMOLLM2.name
