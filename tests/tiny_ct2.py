"""A tiny random Llama decoder converted to CTranslate2 the way a user converts a model.

A transformers `LlamaForCausalLM` made from a config with seeded random weights and a byte-level BPE
tokenizer trained here on a few sentences (a ChatML chat template, which transformers saves as
chat_template.jinja), written with `save_pretrained`, then converted by CTranslate2's own converter as
`ct2-transformers-converter --copy_files tokenizer.json tokenizer_config.json chat_template.jinja`
runs it. torch and transformers are test dependencies only.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
BOS, EOS = "<s>", "<|im_end|>"
SPECIAL = [BOS, "</s>", "<|im_start|>", EOS]
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, how are you today? I am fine, thank you.",
    "a model of language writes one word after another",
    "peer to peer inference shares machines across a home lab",
]
COPY_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def write_tiny_ct2(directory: Path, seed: int = 0, vocab_size: int = 320, width: int = 64, layers: int = 2,
                   heads: int = 4) -> Path:
    """The converted model in `directory`; the transformers model it came from beside it (`<name>-hf`)."""
    import torch
    from ctranslate2.converters import TransformersConverter
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    source = directory.with_name(directory.name + "-hf")
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS)
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.save_pretrained(source)

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=width, intermediate_size=2 * width,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=1024, bos_token_id=tokenizer.token_to_id(BOS),
                         eos_token_id=tokenizer.token_to_id(EOS), tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # matrices larger than transformers' initialisation: varied text, clear greedy choices
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 2 / width ** 0.5)
    model.save_pretrained(source)

    copy = [name for name in COPY_FILES if (source / name).is_file()]
    TransformersConverter(str(source), copy_files=copy).convert(str(directory), force=True)
    return directory
