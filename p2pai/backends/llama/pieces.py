"""The bytes each token stands for, looked up once per token id."""

from __future__ import annotations

import ctypes
from typing import Any


class TokenPieces:
    """Cache of token id -> piece bytes.

    llama-cpp-python's own `token_to_piece` returns its whole fixed-size
    buffer, NUL padding included; this honours the length llama.cpp returns.
    Control tokens render as nothing, so they never leak into output text.
    """

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab
        self._cache: dict[int, bytes] = {}

    def get(self, token: int) -> bytes:
        piece = self._cache.get(token)
        if piece is None:
            piece = self._cache[token] = self._lookup(token)
        return piece

    def _lookup(self, token: int) -> bytes:
        import llama_cpp

        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, size, 0, False)
            if n >= 0:
                return buf.raw[:n]
            size = -n
