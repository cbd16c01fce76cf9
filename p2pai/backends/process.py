"""The node's handle on a model running in a child process of its own (child.py).

It implements the Engine interface by sending each call to the child over a
socketpair (channel.py). llama.cpp aborts its whole process on some failures
(a bad graph, a dead RPC worker, a bug reached by an odd request), so every
model runs apart from the node: when the child dies, the requests in flight
fail with ModelCrashedError (WorkerLostError when it reported a lost RPC
worker first), the child is reaped, and `on_failed` tells the model manager,
which starts the model again on its next request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import (
    BackendError,
    GenerationChunk,
    GenerationRequest,
    ModelCrashedError,
    ModelInfo,
    ModelLoadError,
    ModelStats,
    QueueFullError,
    StreamItem,
    WorkerLostError,
)
from .channel import Message, MessageReader, decode_error
from .ct2.settings import Ct2Settings
from .llama.loading import LlamaSettings
from .onnx.settings import OnnxSettings
from .rpc.relay import Credentials, Endpoint
from .transcription import AudioInfo, Segment, TranscriptionJob

log = logging.getLogger(__name__)

LOAD_TIMEOUT = 600.0
CLOSE_TIMEOUT = 5.0
STDERR_LINES = 20


@dataclass(frozen=True)
class ChildSpec:
    """What the child needs to load its model."""

    name: str
    settings: LlamaSettings | OnnxSettings | Ct2Settings
    workers: tuple[Endpoint, ...] = ()
    """RPC workers holding some of its layers, in device order."""
    credentials: Credentials | None = None
    """How it authenticates to its workers."""


_END = object()
"""Queued after a call's result, and at the end of a generation that failed."""


class ModelProcess:
    """A model in its own process. Create with `await ModelProcess.start(spec, on_failed)`."""

    def __init__(self, spec: ChildSpec, process: asyncio.subprocess.Process,
                 on_failed: Callable[[ModelProcess], None]) -> None:
        self.name = spec.name
        self.spec = spec
        self._process = process
        self._on_failed = on_failed
        self._ids = itertools.count(1)
        self._submitted = 0
        self._pending: dict[int, asyncio.Queue[Any]] = {}
        self._generating: set[int] = set()
        """Generations the child has not finished: slots hold the first ones, the rest wait. One
        the child finished leaves it, even while its client has still to read the rest of it: a
        slow reader holds no slot, so it must not hold a place in the queue either."""
        self._decode_tps: float | None = None
        self._answer_tokens: float | None = None
        self._ready: asyncio.Future[ModelInfo] = asyncio.get_running_loop().create_future()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._lost_worker: str | None = None
        self.failure: BackendError | None = None
        """Why the model stopped working, once it has."""
        self.info: ModelInfo
        self.placement: Any = None
        """The RPC Placement it was loaded with (set by the RPC loader), for diagnostics."""
        self._channel = MessageReader(self._dispatch, self._channel_lost)
        self._tasks = [asyncio.create_task(self._read_stderr())]

    @classmethod
    async def start(cls, spec: ChildSpec, on_failed: Callable[[ModelProcess], None]) -> ModelProcess:
        """Start the child and wait until its model is loaded (ModelLoadError if it cannot be)."""
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "p2pai.backends.child", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "GGML_NO_BACKTRACE": "1"},  # no gdb attached to an aborting child
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        engine = cls(spec, process, on_failed)
        await asyncio.get_running_loop().create_unix_connection(lambda: engine._channel, sock=ours)
        engine._tasks.append(asyncio.create_task(engine._watch()))
        try:
            engine._channel.send("load", spec)
            engine.info = await asyncio.wait_for(asyncio.shield(engine._ready), LOAD_TIMEOUT)
        except BaseException as exc:
            await engine.close()
            if isinstance(exc, ModelLoadError):
                raise
            if isinstance(exc, (BackendError, ConnectionError, asyncio.TimeoutError)):
                raise ModelLoadError(f"could not load {spec.name!r}: {exc}") from exc
            raise
        return engine

    @property
    def pid(self) -> int:
        return self._process.pid

    def stats(self) -> ModelStats:
        """Counted here, with what the child reports each decode step: no round trip."""
        slots = self.info.slots
        generating = len(self._generating)
        in_flight = min(generating, slots)
        return ModelStats(loaded=self.failure is None, in_flight=in_flight, queued=generating - in_flight,
                          slots=slots, decode_tps=self._decode_tps, answer_tokens=self._answer_tokens,
                          pid=self.pid, calls=len(self._pending) - generating,
                          submitted=self._submitted)

    async def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return await self._call("tokenize", text, add_special)

    async def detokenize(self, tokens: list[int]) -> str:
        return await self._call("detokenize", tokens)

    async def embed(self, inputs: list[str]) -> tuple[np.ndarray, int]:
        return await self._call("embed", inputs)

    async def rerank(self, query: str, documents: list[str]) -> tuple[np.ndarray, int]:
        return await self._call("rerank", query, documents)

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Queue the request (QueueFullError when this model's queue is full) and stream its chunks.

        Closing the iterator cancels the request: it leaves the queue, or its slot at the next step.
        """
        return self._stream("generate", request)

    def transcribe(self, job: TranscriptionJob) -> AsyncGenerator[AudioInfo | Segment, None]:
        """Queue the transcription (QueueFullError when the queue is full): AudioInfo, then the segments
        as they are decoded. Closing the iterator cancels it (at its next segment)."""
        return self._stream("transcribe", job)

    async def _stream(self, kind: str, request: Any) -> AsyncGenerator[Any, None]:
        if len(self._generating) >= self.info.slots + self.spec.settings.max_queue:
            raise QueueFullError(f"{len(self._generating) - self.info.slots} requests are waiting for model "
                                 f"{self.name!r}; try again shortly")
        request_id, items = self._submit(kind, request)
        self._generating.add(request_id)
        finished = False
        try:
            while True:
                item = await items.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.is_output:
                    yield item
                if item.ends_stream:
                    finished = True
                    return
        finally:
            self._generating.discard(request_id)
            self._pending.pop(request_id, None)
            if not finished and self.failure is None:
                with contextlib.suppress(ConnectionError):
                    self._channel.send("cancel", request_id)

    async def close(self) -> None:
        """Unload: ask the child to free its model and end; kill it if it does not."""
        if self.failure is None:
            self.failure = BackendError(f"the model {self.name!r} was unloaded")
            with contextlib.suppress(ConnectionError):
                self._channel.send("close")
        self._fail_pending(self.failure)
        try:
            await asyncio.wait_for(self._process.wait(), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            self._kill()
            await self._process.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._channel.transport is not None:
            self._channel.transport.close()

    async def _call(self, method: str, *args: Any) -> Any:
        request_id, items = self._submit("call", method, args)
        try:
            item = await items.get()
        finally:
            self._pending.pop(request_id, None)
        if isinstance(item, BaseException):
            raise item
        return item

    def _submit(self, kind: str, *payload: Any) -> tuple[int, asyncio.Queue[Any]]:
        if self.failure is not None:
            raise self.failure
        request_id = next(self._ids)
        self._submitted = request_id
        items: asyncio.Queue[Any] = asyncio.Queue()
        self._pending[request_id] = items
        try:
            self._channel.send(kind, request_id, *payload)
        except ConnectionError:
            del self._pending[request_id]
            raise self.failure or ModelCrashedError(f"the model process of {self.name!r} is gone") from None
        return request_id, items

    def _count_answer(self, last: StreamItem) -> None:
        """The answers' mean length in tokens (recent ones weigh most)."""
        if last.answer_tokens is not None:
            tokens = float(last.answer_tokens)
            old = self._answer_tokens
            self._answer_tokens = tokens if old is None else 0.8 * old + 0.2 * tokens

    def _dispatch(self, message: Message) -> None:
        kind = message[0]
        pending = self._pending
        if kind == "step":
            _, self._decode_tps, items = message
            for request_id, item in items:
                queue = pending.get(request_id)
                if queue is not None:
                    if isinstance(item, tuple):  # an EncodedError
                        item = decode_error(item)
                        self._generating.discard(request_id)
                    elif item.ends_stream:
                        self._generating.discard(request_id)
                        self._count_answer(item)
                    queue.put_nowait(item)
        elif kind == "result":
            queue = pending.get(message[1])
            if queue is not None:
                queue.put_nowait(message[2])
        elif kind == "error":
            self._generating.discard(message[1])
            queue = pending.get(message[1])
            if queue is not None:
                queue.put_nowait(decode_error(message[2]))
        elif kind == "ready":
            self._ready.set_result(message[1])
        elif kind == "load_failed":
            error = decode_error(message[1])
            self._ready.set_exception(error if isinstance(error, ModelLoadError) else ModelLoadError(str(error)))
        elif kind == "lost":
            _, peer_id, reason = message
            log.warning("model %r lost RPC worker %s: %s", self.name, peer_id, reason)
            self._lost_worker = f"RPC worker {peer_id} of model {self.name!r} failed: {reason}"
            self._fail(WorkerLostError(self._lost_worker))

    def _channel_lost(self) -> None:
        """The child closed its end: it is exiting or dead; _watch learns how once it is reaped."""

    async def _watch(self) -> None:
        code = await self._process.wait()
        if self.failure is not None:
            return  # unloaded, or already failed (a lost worker)
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        detail = f"; it said: {self._stderr[-1]}" if self._stderr else ""
        log.error("the model process of %r (pid %d) died (%s)%s", self.name, self.pid, how, detail)
        self._fail(ModelCrashedError(f"the model {self.name!r} crashed ({how}) while serving this request; "
                                     "it restarts on the next request"))

    def _fail(self, error: BackendError) -> None:
        """First failure wins: kill the child, fail every waiter, let the manager drop this engine."""
        if self.failure is not None:
            return
        self.failure = error
        self._kill()
        if not self._ready.done():
            self._ready.set_exception(ModelLoadError(str(error)))
        self._fail_pending(error)
        self._on_failed(self)

    def _fail_pending(self, error: BackendError) -> None:
        for queue in self._pending.values():
            queue.put_nowait(error)

    async def _read_stderr(self) -> None:
        assert self._process.stderr is not None
        async for raw in self._process.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._stderr.append(line)
                log.debug("%s child: %s", self.name, line)

    def _kill(self) -> None:
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

