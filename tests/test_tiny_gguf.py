"""The tiny GGUF must behave like a real model under real llama.cpp, or tests using it prove nothing."""

from __future__ import annotations

import math
import pathlib
import time

import pytest

from tiny_gguf import CHATML_TEMPLATE, write_tiny_gguf

llama_cpp = pytest.importorskip("llama_cpp")

N_EMBD = 64
GREEDY_TOKENS = 32


def load(path: pathlib.Path, **kwargs: object) -> llama_cpp.Llama:
    return llama_cpp.Llama(str(path), n_ctx=512, n_threads=2, verbose=False, **kwargs)


def greedy(path: pathlib.Path, prompt: str = "The answer is") -> list[int]:
    """Generate GREEDY_TOKENS tokens with a fresh Llama, so runs share no state."""
    llm = load(path)
    tokens: list[int] = []
    for token in llm.generate(llm.tokenize(prompt.encode()), temp=0.0):
        tokens.append(token)
        if len(tokens) == GREEDY_TOKENS:
            return tokens
    raise AssertionError("generate() stopped early")


@pytest.mark.parametrize("f16", [False, True])
def test_writes_quickly_and_loads(tmp_path: pathlib.Path, f16: bool) -> None:
    start = time.perf_counter()
    path = write_tiny_gguf(tmp_path / "tiny.gguf", f16=f16)
    assert time.perf_counter() - start < 2.0
    assert path == tmp_path / "tiny.gguf"
    assert path.stat().st_size < (400_000 if f16 else 800_000)

    llm = load(path)
    assert llm.n_embd() == N_EMBD
    assert llm.metadata["general.file_type"] == ("1" if f16 else "0")
    assert llm.metadata["llama.block_count"] == "2"
    assert llm.metadata["llama.context_length"] == "2048"


def test_hyperparameters_are_honoured(tmp_path: pathlib.Path) -> None:
    llm = load(write_tiny_gguf(tmp_path / "t.gguf", n_layers=3, n_embd=32, n_ctx_train=1024))
    assert llm.n_embd() == 32
    assert llm.metadata["llama.block_count"] == "3"
    assert llm.metadata["llama.context_length"] == "1024"


def test_greedy_is_deterministic_per_seed_and_varied(tmp_path: pathlib.Path) -> None:
    path = write_tiny_gguf(tmp_path / "a.gguf", seed=0)
    first = greedy(path)
    assert greedy(path) == first
    assert write_tiny_gguf(tmp_path / "b.gguf", seed=0).read_bytes() == path.read_bytes()
    assert greedy(write_tiny_gguf(tmp_path / "c.gguf", seed=1)) != first

    vocab = llama_cpp.llama_model_get_vocab(load(path).model)
    assert not any(llama_cpp.llama_vocab_is_eog(vocab, t) for t in first)
    assert len(set(first)) >= 8, "greedy output is stuck on a few tokens"
    byte = llama_cpp.LLAMA_TOKEN_ATTR_BYTE
    is_byte = [bool(llama_cpp.llama_vocab_get_attr(vocab, t) & byte) for t in first]
    assert any(is_byte) and not all(is_byte), "output should mix byte tokens and word pieces"


def test_decoding_never_ends_by_itself(tmp_path: pathlib.Path) -> None:
    """Control tokens score exactly 0 and ordinary ones several nats higher, so even sampling
    practically never picks EOS/EOT and generations run to max_tokens."""
    llm = load(write_tiny_gguf(tmp_path / "t.gguf"), logits_all=True)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    llm.eval(llm.tokenize(b"Hello world"))
    logits = llm.scores[llm.n_tokens - 1]
    control = [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_control(vocab, t)]
    assert {llm.token_bos(), llm.token_eos(), llama_cpp.llama_vocab_eot(vocab)} <= set(control)
    assert all(logits[t] == 0.0 for t in control)
    assert logits.max() > 5.0


def test_tokenize_round_trip(tmp_path: pathlib.Path) -> None:
    llm = load(write_tiny_gguf(tmp_path / "t.gguf"))
    text = b"Hello world, this is a test."
    tokens = llm.tokenize(text)
    assert tokens[0] == llm.token_bos()
    pieces = [llm.detokenize([t]) for t in tokens[1:]]
    assert b" world" in pieces and b" test" in pieces, pieces  # whole words are single tokens
    assert b"H" in pieces, pieces  # unknown words fall back to characters
    assert llm.detokenize(tokens) == text


def test_chatml_tokens_and_end_of_turn(tmp_path: pathlib.Path) -> None:
    llm = load(write_tiny_gguf(tmp_path / "t.gguf"))
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    [im_start] = llm.tokenize(b"<|im_start|>", add_bos=False, special=True)
    [im_end] = llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
    assert llama_cpp.llama_vocab_is_control(vocab, im_start)
    assert llama_cpp.llama_vocab_eot(vocab) == im_end
    assert llama_cpp.llama_vocab_is_eog(vocab, im_end)
    assert llama_cpp.llama_vocab_is_eog(vocab, llm.token_eos())
    assert not llama_cpp.llama_vocab_is_eog(vocab, im_start)


def test_chat_template_is_embedded_and_used(tmp_path: pathlib.Path) -> None:
    llm = load(write_tiny_gguf(tmp_path / "t.gguf"))
    assert llm.metadata["tokenizer.chat_template"] == CHATML_TEMPLATE

    response = llm.create_chat_completion(
        messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0
    )
    message = response["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert isinstance(message["content"], str) and message["content"]
    assert response["choices"][0]["finish_reason"] == "length"
    # llama-cpp-python assumes a GGUF template renders BOS itself, so it adds none; ChatML has none.
    rendered = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    expected = llm.tokenize(rendered.encode(), add_bos=False, special=True)
    assert response["usage"]["prompt_tokens"] == len(expected)


def test_no_chat_template(tmp_path: pathlib.Path) -> None:
    llm = load(write_tiny_gguf(tmp_path / "t.gguf", chat_template=None))
    assert "tokenizer.chat_template" not in llm.metadata


def test_mean_pooled_embedding(tmp_path: pathlib.Path) -> None:
    path = write_tiny_gguf(tmp_path / "t.gguf")
    llm = load(path, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    vector = llm.embed("hello")
    assert len(vector) == N_EMBD
    assert all(isinstance(x, float) and math.isfinite(x) for x in vector)
    assert any(x != 0.0 for x in vector)
    assert llm.embed("world") != vector
