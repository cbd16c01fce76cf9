"""A tiny random Llama-style decoder in CTranslate2's format, the way `ct2-transformers-converter
--copy_files tokenizer.json tokenizer_config.json` lays one out, made without torch or transformers.

The model spec is the one CTranslate2's own Llama converter builds (SwiGLU feed-forward, RMS norms,
rotary attention, fused QKV), filled with seeded random weights; the tokenizer is a byte-level BPE
trained here on a few sentences; tokenizer_config.json carries a ChatML template and the special tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, how are you today? I am fine, thank you.",
    "a model of language writes one word after another",
    "peer to peer inference shares machines across a home lab",
]


def write_tiny_ct2(directory: Path, seed: int = 0, vocab_size: int = 320, width: int = 64, layers: int = 2,
                   heads: int = 4) -> Path:
    from ctranslate2.specs import common_spec, transformer_spec
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    vocabulary = [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]
    vocabulary += [f"<extra_id_{i}>" for i in range(vocab_size - len(vocabulary))]  # as the converter pads

    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[-1]) * 2).astype(np.float32)

    spec = transformer_spec.TransformerDecoderModelSpec.from_config(
        layers, heads, activation=common_spec.Activation.SWISH, pre_norm=True, ffn_glu=True, rms_norm=True,
        rotary_dim=0, rotary_interleave=False)
    decoder = spec.decoder
    decoder.scale_embeddings = False
    decoder.embeddings.weight = weight(vocab_size, width)
    decoder.layer_norm.gamma = np.ones(width, np.float32)
    decoder.projection.weight = weight(vocab_size, width)
    for layer in decoder.layer:
        layer.self_attention.layer_norm.gamma = np.ones(width, np.float32)
        layer.ffn.layer_norm.gamma = np.ones(width, np.float32)
        layer.self_attention.linear[0].weight = weight(3 * width, width)
        layer.self_attention.linear[1].weight = weight(width, width)
        layer.ffn.linear_0.weight = weight(2 * width, width)
        layer.ffn.linear_0_noact.weight = weight(2 * width, width)
        layer.ffn.linear_1.weight = weight(width, 2 * width)
    spec.register_vocabulary(vocabulary)
    spec.config.bos_token, spec.config.eos_token, spec.config.unk_token = "<s>", "</s>", ""
    spec.config.layer_norm_epsilon = 1e-6
    spec.validate()
    spec.optimize(quantization=None)
    directory.mkdir(parents=True, exist_ok=True)
    spec.save(str(directory))
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "<|im_end|>", "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {str(i): {"content": token, "special": True} for i, token in enumerate(SPECIAL)},
    }))
    return directory
