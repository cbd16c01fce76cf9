"""A llama.cpp sampler chain per sequence: sampling runs in C, reading the logits in place.

The chain is the one `Llama.generate` builds (llama-cpp-python 0.3.36), so a
seed gives the same tokens as llama-cpp-python itself: penalties over the last
64 generated tokens (`repeat_last_n`), grammar, then greedy for temperature 0,
Mirostat (v1 or v2) after the temperature when asked, or else top-k, typical,
top-p, min-p, temperature and a seeded draw. `ignore_eos` puts a bias of -inf
on every end-of-generation token first, as llama.cpp's server does.
"""

from __future__ import annotations

import random
from typing import Any

from ..base import InvalidRequestError, SamplingParams

MIROSTAT_M = 100
"""Tokens Mirostat v1 estimates `s_hat` from (llama.cpp's value)."""


class Sampler:
    """Owns one `llama_sampler` chain; `sample` also feeds the token back into it (penalties, grammar)."""

    __slots__ = ("_chain", "seed")

    def __init__(self, vocab: Any, n_vocab: int, sampling: SamplingParams, n_ctx: int,
                 eog: tuple[int, ...] = ()) -> None:
        """``eog``: the model's end-of-generation tokens, banned when ``sampling.ignore_eos``."""
        import llama_cpp

        self.seed = sampling.seed if sampling.seed is not None else random.getrandbits(31)
        grammar = _grammar(vocab, sampling.grammar) if sampling.grammar else None
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self._chain = chain
        add = llama_cpp.llama_sampler_chain_add
        if sampling.ignore_eos and eog:
            biases = (llama_cpp.llama_logit_bias * len(eog))(*(
                llama_cpp.llama_logit_bias(token, float("-inf")) for token in eog))
            add(chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(eog), biases))
        last_n = n_ctx if sampling.repeat_last_n < 0 else sampling.repeat_last_n
        if last_n and (sampling.repeat_penalty, sampling.frequency_penalty,
                       sampling.presence_penalty) != (1.0, 0.0, 0.0):
            add(chain, llama_cpp.llama_sampler_init_penalties(
                n_vocab, last_n, sampling.repeat_penalty, sampling.frequency_penalty, sampling.presence_penalty))
        if grammar is not None:
            add(chain, grammar)
        temperature = sampling.temperature
        if temperature == 0.0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        elif temperature < 0.0:
            add(chain, llama_cpp.llama_sampler_init_dist(self.seed))
        elif sampling.mirostat == 1:
            add(chain, llama_cpp.llama_sampler_init_temp(temperature))
            add(chain, llama_cpp.llama_sampler_init_mirostat(n_vocab, self.seed, sampling.mirostat_tau,
                                                             sampling.mirostat_eta, MIROSTAT_M))
        elif sampling.mirostat == 2:
            add(chain, llama_cpp.llama_sampler_init_temp(temperature))
            add(chain, llama_cpp.llama_sampler_init_mirostat_v2(self.seed, sampling.mirostat_tau,
                                                                sampling.mirostat_eta))
        else:
            add(chain, llama_cpp.llama_sampler_init_top_k(sampling.top_k))
            if sampling.typical_p < 1.0:
                add(chain, llama_cpp.llama_sampler_init_typical(sampling.typical_p, 1))
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
