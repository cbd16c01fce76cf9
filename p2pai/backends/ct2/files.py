"""What a converted CTranslate2 model directory holds, read before the model loads (pure Python).

`ct2-transformers-converter` writes model.bin, config.json and the vocabulary, plus the files
given to `--copy_files` (text generation needs tokenizer.json, and tokenizer_config.json or
chat_template.jinja for the chat template and special tokens).
A Whisper model is recognised by the language ids its config.json lists.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from .settings import Ct2Kind


class Ct2FilesError(Exception):
    """The directory is not a usable CTranslate2 model; the message says what is missing."""


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise Ct2FilesError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise Ct2FilesError(f"{path} is not a JSON object")
    return data


@functools.lru_cache(maxsize=256)
def model_kind(directory: Path) -> Ct2Kind:
    """Whisper or a text generator, from the model's config.json (Ct2FilesError if it is unreadable)."""
    if not (directory / "model.bin").is_file():
        raise Ct2FilesError(f"{directory} holds no model.bin: not a CTranslate2 model directory")
    config = read_json(directory / "config.json")
    return "whisper" if "lang_ids" in config else "generator"


MULTILINGUAL_VOCABULARY = 51865
"""CTranslate2's own rule (WhisperReplica): a vocabulary this large is a multilingual Whisper's; an
English-only one (tiny.en, base.en...) has one token fewer. Its config.json lists the language ids all
the same, so they cannot tell."""


@functools.lru_cache(maxsize=256)
def whisper_multilingual(directory: Path) -> bool:
    """Whether a Whisper model knows more than English, and so can translate (Ct2FilesError if unreadable)."""
    return len(read_vocabulary(directory)) >= MULTILINGUAL_VOCABULARY


def read_vocabulary(directory: Path) -> list[str]:
    """The model's tokens by id, as the converter saved them (vocabulary.json or vocabulary.txt)."""
    path = directory / "vocabulary.json"
    if path.is_file():
        try:
            tokens = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise Ct2FilesError(f"cannot read {path}: {exc}") from exc
        if not isinstance(tokens, list) or not all(isinstance(token, str) for token in tokens):
            raise Ct2FilesError(f"{path} is not a list of tokens")
        return tokens
    try:
        lines = (directory / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    except OSError as exc:
        raise Ct2FilesError(f"{directory} has no vocabulary.json or vocabulary.txt") from exc
    return lines[:-1] if lines and lines[-1] == "" else lines
