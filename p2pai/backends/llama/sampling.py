"""A llama.cpp sampler chain per sequence: sampling runs in C, reading the logits in place.

The chain is the one `Llama.generate` builds (llama-cpp-python 0.3.36), so a
seed gives the same tokens as llama-cpp-python itself: penalties over the last
64 generated tokens, grammar, then greedy for temperature 0, or top-k, top-p,
min-p, temperature and a seeded draw.
"""

from __future__ import annotations

import random
from typing import Any

from ..base import InvalidRequestError, SamplingParams

PENALTY_LAST_N = 64
"""`Llama`'s `last_n_tokens_size` default."""


class Sampler:
    """Owns one `llama_sampler` chain; `sample` also feeds the token back into it (penalties, grammar)."""

    __slots__ = ("_chain", "seed")

    def __init__(self, vocab: Any, n_vocab: int, sampling: SamplingParams) -> None:
        import llama_cpp

        self.seed = sampling.seed if sampling.seed is not None else random.getrandbits(31)
        grammar = _grammar(vocab, sampling.grammar) if sampling.grammar else None
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self._chain = chain
        add = llama_cpp.llama_sampler_chain_add
        if (sampling.repeat_penalty, sampling.frequency_penalty, sampling.presence_penalty) != (1.0, 0.0, 0.0):
            add(chain, llama_cpp.llama_sampler_init_penalties(
                n_vocab, PENALTY_LAST_N, sampling.repeat_penalty, sampling.frequency_penalty,
                sampling.presence_penalty))
        if grammar is not None:
            add(chain, grammar)
        temperature = sampling.temperature
        if temperature == 0.0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        elif temperature < 0.0:
            add(chain, llama_cpp.llama_sampler_init_dist(self.seed))
        else:
            add(chain, llama_cpp.llama_sampler_init_top_k(sampling.top_k))
            add(chain, llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
            add(chain, llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
            add(chain, llama_cpp.llama_sampler_init_temp(temperature))
            add(chain, llama_cpp.llama_sampler_init_dist(self.seed))

    def sample(self, ctx: Any, index: int) -> int:
        """Sample from row `index` of the last decode's logits, and accept the token."""
        import llama_cpp

        return llama_cpp.llama_sampler_sample(self._chain, ctx, index)

    def close(self) -> None:
        import llama_cpp

        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None


def _grammar(vocab: Any, text: str) -> Any:
    """A grammar sampler, refusing text llama.cpp cannot parse (a NULL sampler would crash the chain)."""
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(vocab, text.encode("utf-8"), b"root")
    if not sampler:
        raise InvalidRequestError("the grammar could not be parsed", code="invalid_grammar", param="grammar")
    return sampler
