"""Checks a request must pass before anything of it reaches llama.cpp.

The protocol models check what is the same for every node and model (types,
ranges, fixed counts); these checks need the model (its vocabulary and
context) or the node's settings (Limits).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..backends.base import InvalidRequestError
from ..backends.llama.tokens import check_token_ids


def too_large(message: str, param: str | None, code: str = "request_too_large") -> InvalidRequestError:
    return InvalidRequestError(message, code=code, param=param)


def check_count(count: int, limit: int, what: str, param: str) -> None:
    if count > limit:
        raise too_large(f"{count} {what} in one request is more than this node's limit of {limit}", param)


def check_token_prompt(ids: Sequence[int], n_vocab: int, n_ctx: int, param: str) -> None:
    """A prompt given as token ids: ids of this model, and no more than fit its context."""
    if len(ids) > n_ctx:
        raise InvalidRequestError(
            f"the prompt has {len(ids)} tokens, which does not fit this model's context of {n_ctx} tokens",
            code="context_length_exceeded", param=param)
    check_token_ids(ids, n_vocab, param)  # the model process checks again where ids meet llama.cpp


def check_logit_bias(bias: dict[str, float] | None, n_vocab: int) -> None:
    """The protocol checked that keys are decimal ids and biases lie in [-100, 100]."""
    if bias:
        check_token_ids((int(key) for key in bias), n_vocab, "logit_bias")


def check_text_lengths(texts: Sequence[str], max_chars: int | None, param: str) -> None:
    """Texts for a model that refuses over-long inputs: one far too long to fit is refused before it is
    tokenized (which costs about 1 s per million characters)."""
    if max_chars is None:
        return
    for index, text in enumerate(texts):
        if len(text) > max_chars:
            where = f"{param} {index}" if len(texts) > 1 else f"the {param}"
            raise InvalidRequestError(f"{where} has {len(text)} characters, far more than this model takes "
                                      f"(at most {max_chars})", code="context_length_exceeded", param=param)
