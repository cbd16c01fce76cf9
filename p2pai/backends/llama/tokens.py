"""Token ids from a request, checked before llama.cpp sees them.

llama.cpp aborts its whole process (std::out_of_range) on an id outside the
vocabulary. The node validates ids first; this check repeats it where the ids
meet llama.cpp, so a request can never take a model process down this way.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..base import InvalidRequestError


def check_token_ids(tokens: Iterable[int], n_vocab: int, param: str) -> list[int]:
    """`tokens` as a list, or InvalidRequestError naming the first id outside [0, n_vocab)."""
    ids = list(tokens)
    for token in ids:
        if not 0 <= token < n_vocab:
            raise InvalidRequestError(
                f"token id {token} is outside this model's vocabulary [0, {n_vocab})",
                code="invalid_token_id",
                param=param,
            )
    return ids
