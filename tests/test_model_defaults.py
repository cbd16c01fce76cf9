"""A model config's `parameters.max_tokens` caps every request that sets none: how the built-in
models (BUILTIN_MAX_TOKENS in their configs, tests/test_catalog.py) keep a default request from
running on to the end of the context."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import _client

CAP = 7


async def test_a_config_max_tokens_caps_requests_that_set_none(tiny_path: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_path, models / "tiny.gguf")
    (models / "capped.yaml").write_text(f"name: capped\nparameters:\n  model: tiny.gguf\n  temperature: 0\n"
                                        f"  max_tokens: {CAP}\ncontext_size: 512\n")
    chat = {"model": "capped", "messages": [{"role": "user", "content": "hello world"}]}
    async with _client(models, tmp_path / "data") as client:
        # Without the cap a chat runs to the end of the context (the tiny model rarely ends on its own),
        # a completion to OpenAI's 16.
        capped = await (await client.post("/v1/chat/completions", json=chat)).json()
        assert capped["usage"]["completion_tokens"] == CAP and capped["choices"][0]["finish_reason"] == "length"
        completion = await (await client.post("/v1/completions", json={"model": "capped", "prompt": "hello"})).json()
        assert completion["usage"]["completion_tokens"] == CAP
        asked = await (await client.post("/v1/chat/completions", json={**chat, "max_tokens": CAP + 5})).json()
        assert asked["usage"]["completion_tokens"] == CAP + 5  # asking for more gets more
