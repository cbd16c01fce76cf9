"""ONNX Runtime and the `tokenizers` library, as an ONNX model's process uses them.

Texts become token ids here (never padded or truncated by tokenizer.json's own settings: one of
the built-in tokenizers pads everything to 128), and a batch of token ids becomes one session
run, padded to the batch's longest input: mean or CLS pooling and normalisation for an
embedding model, a sigmoid over the logit for a cross-encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..base import InvalidRequestError, ModelLoadError
from .settings import OnnxSettings

if TYPE_CHECKING:
    from tokenizers import Encoding

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}
"""Short names a config may use; ONNX Runtime's own names are accepted too."""
BEST_FIRST = ("CUDAExecutionProvider", "ROCMExecutionProvider", "CoreMLExecutionProvider", "DmlExecutionProvider",
              "CPUExecutionProvider")
"""The default order. TensorRT builds an engine per input shape (minutes) and Azure runs nothing
locally: neither is chosen unless a config names it."""


def choose_providers(wanted: Sequence[str], available: Sequence[str]) -> list[str]:
    """The providers to ask a session for, best first (ModelLoadError if none of the wanted ones is here)."""
    if not wanted:
        return [name for name in BEST_FIRST if name in available] or list(available)
    names = [PROVIDERS.get(name.lower(), name) for name in wanted]
    usable = [name for name in names if name in available]
    missing = [name for name in names if name not in available]
    if not usable:
        raise ModelLoadError(f"none of the providers {', '.join(wanted)} is available here "
                             f"(ONNX Runtime has: {', '.join(available)})")
    if missing:
        log.warning("ONNX Runtime providers not available here, skipped: %s", ", ".join(missing))
    return usable


@dataclass(frozen=True)
class Tokens:
    """One input (a text, or a query and a document) as the model reads it."""

    ids: list[int]
    type_ids: list[int]


def check_one_runtime() -> None:
    """onnxruntime and onnxruntime-gpu install into one folder: with both, whichever came last is half
    overwritten by the other (FACTS.md). Refuse to load rather than fail in odd ways later."""
    from importlib.metadata import PackageNotFoundError, distribution

    installed = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            distribution(name)
            installed.append(name)
        except PackageNotFoundError:
            pass
    if len(installed) == 2:
        raise ModelLoadError("onnxruntime and onnxruntime-gpu are both installed and break each other: run "
                             "`pip uninstall -y onnxruntime onnxruntime-gpu`, then scripts/install.sh (with the "
                             "gpu extra for onnxruntime-gpu)")


class Encoder:
    """One model's ONNX session and tokenizer; `run` is called on one thread at a time."""

    def __init__(self, settings: OnnxSettings) -> None:
        """Load both (ModelLoadError if either cannot be)."""
        check_one_runtime()
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.settings = settings
        try:
            tokenizer = Tokenizer.from_file(settings.tokenizer)
        except Exception as exc:
            raise ModelLoadError(f"cannot read the tokenizer {settings.tokenizer}: {exc}") from exc
        tokenizer.no_padding()
        if settings.task == "rerank":  # the document gives way to the query, as cross-encoders are used
            tokenizer.enable_truncation(settings.max_length, strategy="only_second")
        else:
            tokenizer.no_truncation()  # a longer input is refused, never silently cut
        self.tokenizer = tokenizer
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.threads
        options.inter_op_num_threads = 1
        # The threads spin while a run lasts (waking a sleeping one costs more than the operators of a short
        # input), and stop when it ends: between runs the tokenizer and the node need the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        options.log_severity_level = 3
        providers = choose_providers(settings.providers, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(settings.path, options, providers=providers)
        except Exception as exc:
            raise ModelLoadError(f"ONNX Runtime cannot load {settings.path}: {exc}") from exc
        self.inputs = {node.name for node in self.session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= self.inputs:
            raise ModelLoadError(f"{settings.path} is not a transformer encoder: its inputs are "
                                 f"{', '.join(sorted(self.inputs))} (input_ids and attention_mask are needed)")
        output = self.session.get_outputs()[0]
        self.output = output.name
        self.providers = tuple(self.session.get_providers())
        self.n_vocab = tokenizer.get_vocab_size(with_added_tokens=True)

    def texts(self, texts: list[str]) -> list[Tokens]:
        """Each text's tokens; InvalidRequestError for one longer than the model takes."""
        encodings = self.tokenizer.encode_batch(texts)
        for index, encoding in enumerate(encodings):
            if len(encoding.ids) > self.settings.max_length:
                where = f"input {index}" if len(texts) > 1 else "the input"
                raise InvalidRequestError(
                    f"{where} has {len(encoding.ids)} tokens, more than this model's limit of "
                    f"{self.settings.max_length}", code="context_length_exceeded", param="input")
        return [_tokens(encoding) for encoding in encodings]

    def pairs(self, query: str, documents: list[str]) -> list[Tokens]:
        """The query with each document, each document cut to fit; InvalidRequestError if the query alone does not."""
        try:
            encodings = self.tokenizer.encode_batch([(query, document) for document in documents])
        except Exception as exc:
            raise InvalidRequestError(
                f"the query is too long for this model's limit of {self.settings.max_length} tokens "
                f"with a document: {exc}", code="context_length_exceeded", param="query") from exc
        return [_tokens(encoding) for encoding in encodings]

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special).ids)

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def run(self, batch: Sequence[Tokens]) -> np.ndarray:
        """One session run over the batch, padded to its longest input: a float32 row (embeddings) or
        a score in [0, 1] (rerank) per input."""
        longest = max(len(tokens.ids) for tokens in batch)
        ids = np.zeros((len(batch), longest), dtype=np.int64)
        types = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for row, tokens in enumerate(batch):
            n = len(tokens.ids)
            ids[row, :n] = tokens.ids
            types[row, :n] = tokens.type_ids
            mask[row, :n] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = types
        (out,) = self.session.run([self.output], feeds)
        out = np.asarray(out, dtype=np.float32)
        if self.settings.task == "rerank":
            logits = out.reshape(len(batch), -1)[:, 0]
            return 1.0 / (1.0 + np.exp(-logits))
        if out.ndim == 3:  # token vectors: pool them
            if self.settings.pooling == "cls":
                out = out[:, 0]
            else:
                weights = mask[:, :, None].astype(np.float32)
                out = (out * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
        if self.settings.normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def _tokens(encoding: Encoding) -> Tokens:
    return Tokens(encoding.ids, encoding.type_ids)
