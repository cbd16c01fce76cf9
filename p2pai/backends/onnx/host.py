"""An ONNX model inside its own process (started like every model, by process.py).

ONNX Runtime is native code like llama.cpp: a crash ends this process and costs only this
model's requests. Threads: the main thread is the model thread, running the batcher's
sessions; the receiving thread reads the node's calls and tokenizes their inputs, so the next
batch is ready when a run ends. Calls (embed, rerank, tokenize, detokenize) are answered with one
`result` or `error` each; nothing is cancelled (a run takes milliseconds).
"""

from __future__ import annotations

import threading
from typing import Any

from ..base import BackendError, ModelInfo
from ..channel import BlockingChannel, encode_error
from .batcher import Batcher, Job
from .runtime import Encoder
from .settings import OnnxSettings

MAX_CHARS_PER_TOKEN = 50
"""An input longer than max_length x this many characters is refused before it is tokenized:
text runs at about 4 characters per token, and tokenizing costs about 1 s per million characters."""


class OnnxServer:
    def __init__(self, channel: BlockingChannel) -> None:
        self._channel = channel

    def run(self, name: str, settings: OnnxSettings) -> None:
        """Load, then serve until the node says close or goes away; on the main (model) thread."""
        try:
            encoder = Encoder(settings)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the node reports it as a load failure
            self._channel.send("load_failed", encode_error(exc))
            return
        batcher = Batcher(encoder.run, self._finished, settings.max_batch, settings.batch_wait)
        self._channel.send("ready", ModelInfo(
            metadata={}, bos_text="", eos_text="", fim=None, n_ctx=settings.max_length, n_vocab=encoder.n_vocab,
            slots=settings.max_batch, providers=encoder.providers,
            max_input_chars=settings.max_length * MAX_CHARS_PER_TOKEN))
        threading.Thread(target=self._receive, args=(encoder, batcher), name="receive", daemon=True).start()
        batcher.run()

    def _receive(self, encoder: Encoder, batcher: Batcher) -> None:
        while True:
            message = self._channel.receive_or_close()
            kind = message[0]
            if kind == "close":
                batcher.stop()
                return
            if kind == "generate":  # never sent (serving checks tasks first), answered all the same
                self._channel.send("error", message[1], encode_error(BackendError("an ONNX model does not generate")))
            elif kind == "call":
                _, request_id, method, args = message
                try:
                    self._call(encoder, batcher, request_id, method, args)
                except Exception as exc:  # noqa: BLE001 - the call's own failure, sent to its caller
                    self._channel.send("error", request_id, encode_error(exc))

    def _call(self, encoder: Encoder, batcher: Batcher, request_id: int, method: str, args: tuple[Any, ...]) -> None:
        if method == "embed":
            batcher.submit(Job(request_id, encoder.texts(*args)))
        elif method == "rerank":
            batcher.submit(Job(request_id, encoder.pairs(*args)))
        elif method == "tokenize":
            self._channel.send("result", request_id, encoder.tokenize(*args))
        elif method == "detokenize":
            self._channel.send("result", request_id, encoder.detokenize(*args))
        else:
            raise BackendError(f"an ONNX model does not {method}")

    def _finished(self, job: Job, error: BaseException | None) -> None:
        if error is not None:
            self._channel.send("error", job.tag, encode_error(error))
        else:
            self._channel.send("result", job.tag, (job.rows, job.tokens))
