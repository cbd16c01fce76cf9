"""A model's own process: `python -m p2pai.backends.child FD` (an ONNX model's: onnx/host.py, a
CTranslate2 model's: ct2/host.py).

A crash in llama.cpp (an abort, a segfault, the OOM killer) ends this process,
never the node: the node fails the requests this model was serving and starts
it again on the next one (process.py). Threads here: the main thread is the
model loop, which makes every llama.cpp call; a receiving thread reads the
node's messages; an RPC model also has its workers' forwarders on a thread
(rpc/forwarding.py). Each decode step's chunks leave in one message.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import threading
from typing import Any

from ..malloc_tuning import keep_tensor_memory, tune_malloc
from .base import GenerationChunk
from .channel import BlockingChannel, EncodedError, encode_error
from .ct2.settings import Ct2Settings
from .llama.host import LlamaHost
from .llama.loading import LlamaSettings
from .llama.scheduler import Outbox, Scheduler, Sequence
from .model_loop import ModelLoop
from .onnx.settings import OnnxSettings
from .orphan import die_with_parent
from .process import ChildSpec


class ChildServer:
    def __init__(self, channel: BlockingChannel) -> None:
        self._channel = channel
        self._loop = ModelLoop()
        self._host: LlamaHost | None = None
        self._sequences: dict[int, Sequence] = {}
        """Generations not yet finished, by the node's request id; written by both threads (GIL-atomic ops)."""

    def run(self, spec: ChildSpec, settings: LlamaSettings) -> None:
        """Load, then serve until the node says close or goes away; on the main (model) thread."""
        if spec.workers:
            from .rpc.forwarding import connect_workers

            assert spec.credentials is not None
            connect_workers(spec.workers, spec.credentials, lambda peer, reason: self._channel.send(
                "lost", peer, reason))
        try:
            self._host = LlamaHost(spec.name, settings, self._loop, self._deliver)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the node reports it as a load failure
            self._channel.send("load_failed", encode_error(exc))
            return
        self._channel.send("ready", self._host.info())
        threading.Thread(target=self._receive, name="receive", daemon=True).start()
        self._loop.run()

    def _receive(self) -> None:
        """Turn the node's messages into work for the model loop, until close or the node is gone."""
        host = self._host
        assert host is not None
        while True:
            message = self._channel.receive_or_close()
            kind = message[0]
            if kind == "generate":
                _, request_id, request = message
                seq = Sequence(request, request_id)
                self._sequences[request_id] = seq
                try:
                    host.submit(seq)
                except Exception as exc:  # noqa: BLE001 - the request's own failure, sent to its caller
                    self._forget(request_id)
                    self._channel.send("error", request_id, encode_error(exc))
            elif kind == "cancel":
                cancelled = self._forget(message[1])
                if cancelled is not None:
                    host.cancel(cancelled)
            elif kind == "call":
                self._loop.post(functools.partial(self._call, *message[1:]))
            else:  # close
                self._loop.post(host.close)
                self._loop.stop()
                return

    def _call(self, request_id: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            result = getattr(self._host, method)(*args)
        except Exception as exc:  # noqa: BLE001 - the call's own failure, sent to its caller
            self._channel.send("error", request_id, encode_error(exc))
        else:
            self._channel.send("result", request_id, result)

    def _deliver(self, outbox: Outbox, scheduler: Scheduler) -> None:
        """One decode step's chunks, for every sequence, in one message to the node."""
        items: list[tuple[int, GenerationChunk | EncodedError]] = []
        for seq, item in outbox:
            if isinstance(item, GenerationChunk):
                items.append((seq.tag, item))
                if item.finish_reason is not None:
                    self._forget(seq.tag)
            else:
                items.append((seq.tag, encode_error(item)))
                self._forget(seq.tag)
        self._channel.send("step", scheduler.decode_tps, items)

    def _forget(self, request_id: int) -> Sequence | None:
        """The generation leaves the table (finished, failed or cancelled); both threads call this."""
        try:
            return self._sequences.pop(request_id)
        except KeyError:
            return None


def main() -> None:
    die_with_parent()
    channel = BlockingChannel(socket.socket(fileno=int(sys.argv[1])))
    try:
        _, spec = channel.receive()
        settings = spec.settings
        if isinstance(settings, OnnxSettings):
            from .onnx.host import OnnxServer

            OnnxServer(channel).run(spec.name, settings)
        elif isinstance(settings, Ct2Settings):
            keep_tensor_memory()  # before any thread: CTranslate2's buffers reused, not faulted in per request
            from .ct2.host import Ct2Server

            Ct2Server(channel).run(spec.name, settings)
        else:
            # A llama.cpp model's RPC forwarders read sockets through asyncio (malloc_tuning.py).
            tune_malloc()
            ChildServer(channel).run(spec, settings)
    except (EOFError, OSError):
        pass  # the node is gone
    # Skip interpreter teardown: freeing a model whose RPC worker died aborts llama.cpp,
    # and the node has nothing more to learn from this process.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
