"""Logprobs of a sampled token, computed from the last logits row.

llama-cpp-python only offers logprobs with `logits_all=True`, which makes
prompt processing keep a full vocabulary row per prompt token; the last row is
all a generated token needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..base import TokenLogprob, TopLogprob
from .pieces import TokenPieces

if TYPE_CHECKING:
    from llama_cpp import Llama


def token_logprob(llm: "Llama", token: int, piece: bytes, top_n: int, pieces: TokenPieces) -> TokenLogprob:
    import llama_cpp

    n_vocab = llm.n_vocab()
    raw = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
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
