"""Logprobs of a sampled token, computed from its sequence's logits row.

Only sequences that asked for logprobs pay for this: the row (the whole
vocabulary) is read in place with numpy, right after the decode step that
produced it and before the next one overwrites it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..base import TokenLogprob, TopLogprob
from .pieces import TokenPieces


def token_logprob(ctx: Any, index: int, n_vocab: int, token: int, piece: bytes, top_n: int,
                  pieces: TokenPieces) -> TokenLogprob:
    """`token`'s logprob and the `top_n` most likely alternatives, from logits row `index` of `ctx`."""
    import llama_cpp

    raw = llama_cpp.llama_get_logits_ith(ctx, index)
    logits = np.ctypeslib.as_array(raw, shape=(n_vocab,))
    shifted = logits - logits.max()
    logsumexp = float(np.log(np.exp(shifted).sum()))
    top: tuple[TopLogprob, ...] = ()
    if top_n > 0:
        ids = np.argpartition(-shifted, top_n - 1)[:top_n]
        ids = ids[np.argsort(-shifted[ids])]
        top = tuple(_top(pieces.get(int(i)), float(shifted[i]) - logsumexp) for i in ids)
    return TokenLogprob(
        token=piece.decode("utf-8", errors="replace"),
        logprob=float(shifted[token]) - logsumexp,
        bytes=tuple(piece),
        top=top,
    )


def _top(piece: bytes, logprob: float) -> TopLogprob:
    return TopLogprob(token=piece.decode("utf-8", errors="replace"), logprob=logprob, bytes=tuple(piece))
