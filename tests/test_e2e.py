"""Real `p2pai start` processes on loopback, driven by the official openai client."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from p2pai.models.builtin import BUILTIN_MODELS

pytestmark = pytest.mark.e2e


def client_for(node, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=node.url + "/v1", api_key=api_key, max_retries=0, timeout=60)


def test_openai_client_against_tiny_models(start_node, models_dir: Path) -> None:
    node = start_node("--models-dir", str(models_dir), "--threads", "2")
    client = client_for(node)

    assert sorted(m.id for m in client.models.list()) == ["tiny", "tiny-b"]

    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8)
    assert reply.choices[0].message.content and reply.usage.completion_tokens == 8

    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8, stream=True,
        stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 8

    completion = client.completions.create(model="tiny", prompt="the water", max_tokens=5)
    assert completion.choices[0].text and completion.usage.completion_tokens == 5

    vectors = client.embeddings.create(model="tiny", input=["hello", "world"])
    assert [len(d.embedding) for d in vectors.data] == [64, 64]

    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[])


def test_single_gguf_by_path_and_api_key(start_node, tiny_path: Path) -> None:
    node = start_node("--model", str(tiny_path), "--api-key", "k1", "--threads", "2")
    with pytest.raises(openai.AuthenticationError):
        client_for(node, "wrong").models.list()
    client = client_for(node, "k1")
    assert [m.id for m in client.models.list()] == ["tiny"]
    # The only model: `model` may be left empty, as LocalAI allows.
    reply = client.completions.create(model="", prompt="hello", max_tokens=3)
    assert reply.model == "tiny"


def test_env_variables_configure_the_node(start_node, tiny_path: Path) -> None:
    node = start_node(env={"P2PAI_MODEL": str(tiny_path), "P2PAI_API_KEY": "envkey", "P2PAI_PRELOAD": "1"})
    assert [m.id for m in client_for(node, "envkey").models.list()] == ["tiny"]
    assert "loaded in" in node.log.read_text()


def test_bad_model_flag_is_a_clear_error(start_node, tmp_path: Path) -> None:
    node = start_node("--model", str(tmp_path / "missing.gguf"), ready=False)
    assert node.proc.wait(30) == 2
    assert "no such file" in node.log.read_text()


def test_sigterm_stops_the_node_cleanly(start_node, tiny_path: Path) -> None:
    node = start_node("--model", str(tiny_path))
    assert node.stop() == 0


@pytest.mark.slow
def test_builtin_gemma_model(start_node) -> None:
    """No model configured: the built-in gemma-3-270m (beside the default SmolLM2) is assembled, loaded and answers."""
    node = start_node("--threads", "2")
    client = client_for(node)
    onnx = {model.name for model in BUILTIN_MODELS if model.present()}  # once fetched (p2pai models fetch)
    assert {m.id for m in client.models.list()} == {"gemma-3-270m", "smollm2-135m-instruct", *onnx}
    reply = client.chat.completions.create(
        model="gemma-3-270m", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16, temperature=0)
    assert reply.choices[0].message.content.strip()
    assert reply.usage.prompt_tokens > 5
    stream = client.completions.create(model="gemma-3-270m", prompt="Monday, Tuesday, Wednesday,", max_tokens=6,
                                       temperature=0, stream=True)
    text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert text.startswith(" Thursday, Friday")
    vectors = client.embeddings.create(model="gemma-3-270m", input="hello")
    assert len(vectors.data[0].embedding) == 640
