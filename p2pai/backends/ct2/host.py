"""A CTranslate2 model inside its own process (started like every model, by process.py).

CTranslate2, FFmpeg (PyAV) and ONNX Runtime (faster-whisper's VAD) are native code like llama.cpp:
a crash ends this process and costs only this model's requests. Threads: the main thread receives
the node's messages; each request runs on one thread of a pool of `workers` (the model has as many
CTranslate2 replicas), so requests beyond that wait in the pool's queue, in arrival order. Every
piece of output (a segment, a token's text) leaves as a `step` message as soon as it exists.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..base import BackendError
from ..channel import BlockingChannel, encode_error
from .generator import GeneratorHost
from .settings import Ct2Settings
from .whisper import WhisperHost

Work = Callable[[Any, Callable[[], bool]], Iterator[Any]]


class Ct2Server:
    def __init__(self, channel: BlockingChannel) -> None:
        self._channel = channel
        self._cancelled: dict[int, threading.Event] = {}
        """Requests sent to the pool and not finished, by the node's request id."""

    def run(self, name: str, settings: Ct2Settings) -> None:
        """Load, then serve until the node says close or goes away."""
        try:
            host: WhisperHost | GeneratorHost = (WhisperHost(settings) if settings.kind == "whisper"
                                                 else GeneratorHost(settings))
        except Exception as exc:  # noqa: BLE001 - whatever it is, the node reports it as a load failure
            self._channel.send("load_failed", encode_error(exc))
            return
        gc.freeze()  # the modules and the model are never garbage: the collections a request runs skip them
        self._channel.send("ready", host.info())
        with ThreadPoolExecutor(settings.workers, thread_name_prefix="ct2") as pool:
            self._receive(host, pool)
            for event in list(self._cancelled.values()):
                event.set()
            pool.shutdown(wait=False, cancel_futures=True)

    def _receive(self, host: WhisperHost | GeneratorHost, pool: ThreadPoolExecutor) -> None:
        while True:
            message = self._channel.receive_or_close()
            kind = message[0]
            if kind == "generate" and isinstance(host, GeneratorHost):
                self._start(pool, host.generate, *message[1:])
            elif kind == "transcribe" and isinstance(host, WhisperHost):
                self._start(pool, host.transcribe, *message[1:])
            elif kind in ("generate", "transcribe"):
                error = BackendError(f"a {host.settings.kind} model cannot {kind}")
                self._channel.send("error", message[1], encode_error(error))
            elif kind == "cancel":
                event = self._cancelled.get(message[1])
                if event is not None:
                    event.set()
            elif kind == "call":
                self._call(host, *message[1:])
            else:  # close
                return

    def _start(self, pool: ThreadPoolExecutor, work: Work, request_id: int, request: Any) -> None:
        event = threading.Event()
        self._cancelled[request_id] = event
        pool.submit(self._serve, work, request_id, request, event)

    def _serve(self, work: Work, request_id: int, request: Any, cancelled: threading.Event) -> None:
        """On a pool thread: each item to the node as it comes; a failure ends the request alone."""
        try:
            if cancelled.is_set():
                return
            for item in work(request, cancelled.is_set):
                self._channel.send("step", None, [(request_id, item)])
        except Exception as exc:  # noqa: BLE001 - the request's own failure, sent to its caller
            self._channel.send("error", request_id, encode_error(exc))
        finally:
            self._cancelled.pop(request_id, None)

    def _call(self, host: WhisperHost | GeneratorHost, request_id: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            if method not in ("tokenize", "detokenize") or not isinstance(host, GeneratorHost):
                raise BackendError(f"a {host.settings.kind} model does not {method}")
            result = getattr(host, method)(*args)
        except Exception as exc:  # noqa: BLE001 - the call's own failure, sent to its caller
            self._channel.send("error", request_id, encode_error(exc))
        else:
            self._channel.send("result", request_id, result)
