"""Text generation with a converted CTranslate2 decoder (`ct2-transformers-converter`), in its process.

The tokenizer is the model's own tokenizer.json (the `tokenizers` library); its chat template and
special tokens come from tokenizer_config.json (or chat_template.jinja), and reach the node in
ModelInfo, so chat prompts are rendered by the same code as for a GGUF model. Requests run on a
bounded pool of threads, each with a CTranslate2 replica of its own (`inter_threads`); tokens
stream out one by one (`generate_tokens`) through the same stop-string handling as llama.cpp's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base import (
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    InvalidRequestError,
    ModelInfo,
    ModelLoadError,
    Usage,
)
from ..llama.tokens import check_token_ids
from ..text import TextAssembler
from .files import Ct2FilesError, read_json, read_vocabulary
from .settings import Ct2Settings

if TYPE_CHECKING:
    from tokenizers import Tokenizer

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
"""Where a GGUF keeps its template: the serving layer reads it from ModelInfo.metadata."""
GREEDY_BELOW = 1e-5
"""Temperatures at or below this sample greedily, as llama.cpp does for 0."""


def _special(value: Any) -> str:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken object."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


class GeneratorHost:
    def __init__(self, settings: Ct2Settings) -> None:
        """Load the model and its tokenizer (ModelLoadError if either cannot be)."""
        import ctranslate2
        from tokenizers import Tokenizer

        self.settings = settings
        directory = Path(settings.path)
        try:
            config = read_json(directory / "config.json")
            tokenizer_config = read_json(directory / "tokenizer_config.json") \
                if (directory / "tokenizer_config.json").is_file() else {}
            self._tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        except Exception as exc:
            raise ModelLoadError(f"cannot read the tokenizer of {directory} (convert with `--copy_files "
                                 f"tokenizer.json tokenizer_config.json chat_template.jinja`): {exc}") from exc
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        try:
            self._generator = ctranslate2.Generator(settings.path, device=settings.device,
                                                    compute_type=settings.compute_type,
                                                    inter_threads=settings.workers, intra_threads=settings.threads)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the CTranslate2 model in {directory}: {exc}") from exc
        try:
            self._vocabulary = read_vocabulary(directory)
        except Ct2FilesError as exc:
            raise ModelLoadError(str(exc)) from exc
        self._bos = _special(tokenizer_config.get("bos_token")) or str(config.get("bos_token") or "")
        self._eos = _special(tokenizer_config.get("eos_token")) or str(config.get("eos_token") or "")
        template = tokenizer_config.get("chat_template")
        if not isinstance(template, str) and (directory / "chat_template.jinja").is_file():
            template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
        self._metadata = {CHAT_TEMPLATE_KEY: template} if isinstance(template, str) else {}

    def info(self) -> ModelInfo:
        return ModelInfo(metadata=self._metadata, bos_text=self._bos, eos_text=self._eos, fim=None,
                         n_ctx=self.settings.context_size, n_vocab=len(self._vocabulary), slots=self.settings.workers)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special).ids)

    def detokenize(self, tokens: list[int]) -> str:
        return str(self._tokenizer.decode(check_token_ids(tokens, len(self._vocabulary), "tokens"),
                                          skip_special_tokens=False))

    def generate(self, request: GenerationRequest, cancelled: Callable[[], bool]) -> Iterator[GenerationChunk]:
        """The answer's text as it is generated; the last chunk has the finish reason and usage."""
        sampling = request.sampling
        if sampling.grammar is not None:
            raise InvalidRequestError("this CTranslate2 model cannot constrain its output (grammar, response_format, "
                                      "tool_choice)", code="grammar_not_supported")
        if request.logprobs is not None:
            raise InvalidRequestError("this CTranslate2 model does not return logprobs", code="logprobs_not_supported",
                                      param="logprobs")
        prompt = (check_token_ids(request.prompt, len(self._vocabulary), "prompt")
                  if isinstance(request.prompt, tuple) else self.tokenize(request.prompt, request.add_special))
        n_ctx = self.settings.context_size
        if not prompt or len(prompt) >= n_ctx:
            raise InvalidRequestError(f"the prompt has {len(prompt)} tokens; this model takes 1 to {n_ctx - 1}",
                                      code="context_length_exceeded", param="prompt")
        room = n_ctx - len(prompt)
        limit = min(request.max_tokens or room, room)
        greedy = sampling.temperature <= GREEDY_BELOW
        steps = self._generator.generate_tokens(
            [self._vocabulary[token] for token in prompt],
            max_length=limit,
            sampling_temperature=1.0 if greedy else sampling.temperature,
            sampling_topk=1 if greedy else max(sampling.top_k, 0),
            sampling_topp=sampling.top_p,
            repetition_penalty=sampling.repeat_penalty,
            end_token=self._end_tokens(request.stop),
        )
        text = TextAssembler(request.stop)
        detokenizer = Detokenizer(self._tokenizer, prompt)
        produced = 0
        finish: FinishReason = "stop"
        try:
            for step in steps:
                if cancelled():
                    finish = "cancelled"
                    break
                produced += 1
                released = text.push(detokenizer.push(step.token_id).encode())
                if released.text:
                    yield GenerationChunk(text=released.text)
                if released.stopped:
                    break
            else:
                finish = "length" if produced >= limit else "stop"
        finally:
            steps.close()
        rest = ""
        if finish != "cancelled":  # the last token's text, if it ended inside a character, then all that is held
            last = text.push(detokenizer.finish().encode())
            rest = last.text if last.stopped else last.text + text.finish().text
            finish = "stop" if last.stopped else finish
        yield GenerationChunk(text=rest, finish_reason=finish, usage=Usage(len(prompt), produced))

    def _end_tokens(self, stop: tuple[str, ...]) -> list[str]:
        """End of sequence, plus each stop string that is one token (a chat template's end of turn)."""
        ends = [self._eos] if self._eos else []
        for word in stop:
            if self._tokenizer.token_to_id(word) is not None and word not in ends:
                ends.append(word)
        return ends


class Detokenizer:
    """Token ids to text one at a time, the way the tokenizer decodes a whole sequence (spaces,
    byte fallback): a few tokens of context are decoded again each time, and a token that ends
    inside a multi-byte character waits for the next one."""

    CONTEXT = 5

    def __init__(self, tokenizer: Tokenizer, prompt: list[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt[-self.CONTEXT:])
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token: int) -> str:
        self._ids.append(token)
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        after = decode(self._ids[self._prefix:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return str(after[len(before):])

    def finish(self) -> str:
        """What the last tokens decode to even if they end inside a character (as a whole decode has it)."""
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        after = decode(self._ids[self._prefix:], skip_special_tokens=True)
        self._prefix = self._read = len(self._ids)
        return str(after[len(before):])
