"""The node's handle on an RPC-backed model running in its own child process (child.py).

It implements the Engine interface by forwarding each call to the child. When
the child dies (llama.cpp aborts it when a worker dies) or reports a lost
worker, every request in flight fails with WorkerLostError, the child is
killed, and `on_failed` tells the model manager to reload on next use.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import socket
import sys
from typing import Any, AsyncIterator, Callable

from ..base import BackendError, FimTokens, GenerationChunk, GenerationRequest, ModelLoadError, ModelStats
from .child import Channel, ChildSpec, decode_error

log = logging.getLogger(__name__)

LOAD_TIMEOUT = 600.0
CLOSE_TIMEOUT = 5.0


class WorkerLostError(BackendError):
    """An RPC worker of this model died, froze or refused during the request."""


_DONE = object()


class RpcEngine:
    """A model whose layers live on RPC workers. Create with `await RpcEngine.start(spec, on_failed)`."""

    def __init__(self, spec: ChildSpec, process: asyncio.subprocess.Process, channel: Channel,
                 on_failed: Callable[["RpcEngine"], None]) -> None:
        self.name = spec.name
        self.spec = spec
        self._process = process
        self._channel = channel
        self._on_failed = on_failed
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Queue[Any]] = {}
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._decode_tps: float | None = None
        self.failure: str | None = None
        """Why the model stopped working, once it has."""
        self._tasks = [asyncio.create_task(self._read_messages()), asyncio.create_task(self._read_stderr())]
        self.metadata: dict[str, str] = {}
        self.n_ctx = 0
        self.bos_text = ""
        self.eos_text = ""
        self._fim: FimTokens | None = None
        self.placement: Any = None
        """The Placement it was loaded with (set by the loader), for diagnostics."""

    @classmethod
    async def start(cls, spec: ChildSpec, on_failed: Callable[["RpcEngine"], None]) -> "RpcEngine":
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "p2pai.backends.rpc.child", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "GGML_NO_BACKTRACE": "1"},
            )
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        engine = cls(spec, process, Channel(reader, writer), on_failed)
        await engine._channel.send("load", spec)
        try:
            info = await asyncio.wait_for(asyncio.shield(engine._ready), LOAD_TIMEOUT)
        except BaseException as exc:
            await engine.close()
            if isinstance(exc, ModelLoadError):
                raise
            if isinstance(exc, (BackendError, asyncio.TimeoutError)):
                raise ModelLoadError(f"could not load {spec.name!r} on its workers: {exc}") from exc
            raise
        engine.metadata = info["metadata"]
        engine.n_ctx = info["n_ctx"]
        engine.bos_text = info["bos_text"]
        engine.eos_text = info["eos_text"]
        engine._fim = info["fim"]
        return engine

    @property
    def pid(self) -> int:
        return self._process.pid

    def stats(self) -> ModelStats:
        busy = len(self._pending)
        return ModelStats(loaded=self.failure is None, in_flight=min(busy, 1), queued=max(busy - 1, 0),
                          slots=1, decode_tps=self._decode_tps)

    def fim_tokens(self) -> FimTokens | None:
        return self._fim

    async def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return await self._call("tokenize", text, add_special)

    async def detokenize(self, tokens: list[int]) -> str:
        return await self._call("detokenize", tokens)

    async def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        return await self._call("embed", inputs)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        request_id, items = await self._submit("generate", request)
        finished = False
        try:
            while True:
                item = await items.get()
                if item is _DONE:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
        finally:
            self._pending.pop(request_id, None)
            if not finished and self.failure is None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self._channel.send("cancel", request_id)

    async def close(self) -> None:
        self.failure = self.failure or "the model was unloaded"
        if self._process.returncode is None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._channel.send("close")
            try:
                await asyncio.wait_for(self._process.wait(), CLOSE_TIMEOUT)
            except asyncio.TimeoutError:
                self._kill()
        for queue in self._pending.values():
            queue.put_nowait(WorkerLostError(self.failure))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._channel.close()

    async def _call(self, method: str, *args: Any) -> Any:
        request_id, items = await self._submit("call", (method, args))
        try:
            item = await items.get()  # the result (then _DONE), _DONE for None, or an error
        finally:
            self._pending.pop(request_id, None)
        if isinstance(item, BaseException):
            raise item
        return None if item is _DONE else item

    async def _submit(self, kind: str, payload: Any) -> tuple[int, asyncio.Queue[Any]]:
        if self.failure is not None:
            raise WorkerLostError(self.failure)
        request_id = next(self._ids)
        items: asyncio.Queue[Any] = asyncio.Queue()
        self._pending[request_id] = items
        await self._channel.send(kind, request_id, payload)
        return request_id, items

    async def _read_messages(self) -> None:
        try:
            while True:
                message = await self._channel.receive()
                self._dispatch(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        code = await self._process.wait()
        detail = self._stderr[-1] if self._stderr else f"exit status {code}"
        self._fail(f"the model process of {self.name!r} ended ({detail})")

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            self._ready.set_result(message[1])
        elif kind == "load_failed":
            self._ready.set_exception(decode_error(message[1]))
        elif kind == "lost":
            _, peer_id, reason = message
            log.warning("model %r lost RPC worker %s: %s", self.name, peer_id, reason)
            self._fail(f"RPC worker {peer_id} of model {self.name!r} failed: {reason}")
        elif kind == "chunk":
            queue = self._pending.get(message[1])
            if queue is not None:
                queue.put_nowait(message[2])
        elif kind == "done":
            _, request_id, result, self._decode_tps = message
            queue = self._pending.get(request_id)
            if queue is not None:
                if result is not None:
                    queue.put_nowait(result)
                queue.put_nowait(_DONE)
        elif kind == "error":
            queue = self._pending.get(message[1])
            if queue is not None:
                queue.put_nowait(decode_error(message[2]))

    async def _read_stderr(self) -> None:
        assert self._process.stderr is not None
        async for raw in self._process.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._stderr.append(line)
                log.debug("%s child: %s", self.name, line)

    def _fail(self, reason: str) -> None:
        """First failure wins: kill the child, fail every waiter, let the manager drop us."""
        if self.failure is not None:
            return
        self.failure = reason
        self._kill()
        error = WorkerLostError(reason)
        if not self._ready.done():
            self._ready.set_exception(ModelLoadError(reason))
        for queue in self._pending.values():
            queue.put_nowait(error)
        self._on_failed(self)

    def _kill(self) -> None:
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
