"""A tiny random-weight llama GGUF, so tests and benchmarks can run real llama.cpp in milliseconds.

The model is meaningless but exercises the real code paths: an SPM vocabulary with byte
fallback, ChatML control tokens, an embedded chat template, GQA attention and a SwiGLU FFN.
Output is a deterministic function of the seed, so greedy generation is reproducible.
"""

from __future__ import annotations

import os
import pathlib

import gguf
import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Words become "▁word" pieces; suffixes are in-word pieces. Every prefix of a piece is in the
# vocabulary too, because SPM builds tokens by merging adjacent symbols whose concatenation
# is itself a token: without the prefixes the longer pieces could never be reached.
_WORDS = (
    "the of and to a in is it you that he was for on are with as I his they be at one have "
    "this from or had by not word but what some we can out other were all there when up use "
    "your how said an each she which do their time if will way about many then them write "
    "would like so these her long make thing see him two has look more day could go come did "
    "number sound no most people my over know water than call first who may down side been "
    "now find hello world test model token peer node network answer question"
).split()
_SUFFIXES = ("ing", "ed", "er", "es", "ly", "tion", "ment", "ness", "est")
_SINGLES = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()"

_UNK, _BOS, _EOS = "<unk>", "<s>", "</s>"
_IM_START, _IM_END = "<|im_start|>", "<|im_end|>"


def _vocab() -> tuple[list[str], list[float], list[gguf.TokenType]]:
    """Token texts, SPM scores and types, laid out like a llama vocabulary plus ChatML tokens."""
    pieces: dict[str, None] = dict.fromkeys(["▁", *_SINGLES])  # ordered set
    for piece in [f"▁{w}" for w in _WORDS] + list(_SUFFIXES):
        for end in range(2, len(piece) + 1):
            pieces.setdefault(piece[:end])

    tokens = [_UNK, _BOS, _EOS]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    tokens += list(pieces)
    types += [gguf.TokenType.NORMAL] * len(pieces)
    tokens += [_IM_START, _IM_END]
    types += [gguf.TokenType.CONTROL] * 2
    # SPM merges the highest-scoring pair first; longer pieces score higher so whole words win.
    scores = [len(t) - 100.0 if ty == gguf.TokenType.NORMAL else 0.0 for t, ty in zip(tokens, types, strict=True)]
    return tokens, scores, types


def write_tiny_gguf(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_layers: int = 2,
    n_embd: int = 64,
    n_ctx_train: int = 2048,
    chat_template: str | None = CHATML_TEMPLATE,
    f16: bool = False,
) -> pathlib.Path:
    """Write a random llama-architecture GGUF to `path` and return the path.

    `n_embd` must be a multiple of 8 (4 heads of even size, for RoPE). Control tokens get
    all-zero output rows, so their logit is exactly 0 while ordinary tokens spread over
    several nats: decoding practically never ends by itself and produces `max_tokens` tokens,
    which keeps test and benchmark lengths predictable. `<|im_end|>` is still registered as
    end-of-turn (and `</s>` as EOS), so a turn ends if one is generated, e.g. via a logit bias.
    """
    path = pathlib.Path(path)
    tokens, scores, types = _vocab()
    n_vocab = len(tokens)
    n_head, n_head_kv = 4, 2
    head_dim = n_embd // n_head
    n_ff = 2 * n_embd
    rng = np.random.default_rng(seed)
    matrix_dtype = np.float16 if f16 else np.float32

    writer = gguf.GGUFWriter(path, "llama")

    def matrix(rows: int, cols: int, std: float) -> np.ndarray:
        return rng.standard_normal((rows, cols), dtype=np.float32) * std

    def add_matrix(name: str, value: np.ndarray) -> None:
        writer.add_tensor(name, value.astype(matrix_dtype))

    def add_norm(name: str) -> None:
        writer.add_tensor(name, np.ones(n_embd, dtype=np.float32))  # llama.cpp wants 1-D tensors in F32

    writer.add_name(f"tiny-random-llama-seed{seed}")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(n_vocab)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(tokens.index(_UNK))
    writer.add_bos_token_id(tokens.index(_BOS))
    writer.add_eos_token_id(tokens.index(_EOS))
    writer.add_eot_token_id(tokens.index(_IM_END))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(True)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    # Embeddings of unit scale and Xavier-like projections keep the residual stream from being
    # dominated by either the current token or the context; the output std gives logits a
    # spread of a few nats, so sampling at temperature 1 is neither uniform nor greedy.
    embd_std, proj_std, out_std = 1.0, n_embd**-0.5, 3.0 * n_embd**-0.5
    token_embd = matrix(n_vocab, n_embd, embd_std)
    add_matrix("token_embd.weight", token_embd)
    for i in range(n_layers):
        blk = f"blk.{i}"
        add_norm(f"{blk}.attn_norm.weight")
        add_matrix(f"{blk}.attn_q.weight", matrix(n_head * head_dim, n_embd, proj_std))
        add_matrix(f"{blk}.attn_k.weight", matrix(n_head_kv * head_dim, n_embd, proj_std))
        add_matrix(f"{blk}.attn_v.weight", matrix(n_head_kv * head_dim, n_embd, proj_std))
        add_matrix(f"{blk}.attn_output.weight", matrix(n_embd, n_head * head_dim, proj_std))
        add_norm(f"{blk}.ffn_norm.weight")
        add_matrix(f"{blk}.ffn_gate.weight", matrix(n_ff, n_embd, proj_std))
        add_matrix(f"{blk}.ffn_up.weight", matrix(n_ff, n_embd, proj_std))
        add_matrix(f"{blk}.ffn_down.weight", matrix(n_embd, n_ff, n_ff**-0.5))
    add_norm("output_norm.weight")
    # Pushing each output row slightly away from its own token's embedding makes greedy decoding
    # lock onto one repeated token about 5x less often (~0.4% instead of ~2% of seed/prompt
    # pairs); a stronger push starts to favour two-token cycles instead.
    output = matrix(n_vocab, n_embd, out_std) - (0.3 * out_std / embd_std) * token_embd
    output[[i for i, t in enumerate(types) if t in (gguf.TokenType.CONTROL, gguf.TokenType.UNKNOWN)]] = 0
    add_matrix("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
