"""The node's handle on an ONNX model's process: calls counted in inputs, and bounded."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..base import ModelStats, QueueFullError
from ..process import ModelProcess
from .settings import OnnxSettings


class OnnxProcess(ModelProcess):
    """Start with `await OnnxProcess.start(spec, on_failed)`; the spec's settings are OnnxSettings.

    A request is refused (QueueFullError: 503 with Retry-After) when others wait and its inputs
    would make more than `max_queue` wait; alone, a request of any allowed size is taken.
    """

    _inputs = 0
    """Inputs (texts, or documents to rank) sent to the process and not answered yet."""
    _requests = 0

    async def embed(self, inputs: list[str]) -> tuple[np.ndarray, int]:
        return await self._work(len(inputs), "embed", inputs)

    async def rerank(self, query: str, documents: list[str]) -> tuple[np.ndarray, int]:
        return await self._work(len(documents), "rerank", query, documents)

    def stats(self) -> ModelStats:
        """`slots` is the most inputs one run takes; every unanswered request counts as in flight."""
        return ModelStats(loaded=self.failure is None, in_flight=self._requests, queued=0, slots=self.info.slots,
                          decode_tps=None, pid=self.pid, providers=self.info.providers,
                          submitted=self._submitted)

    async def _work(self, count: int, method: str, *args: Any) -> Any:
        settings = self.spec.settings
        assert isinstance(settings, OnnxSettings)
        if self._inputs and self._inputs + count > settings.max_queue:
            raise QueueFullError(f"{self._inputs} inputs are waiting for model {self.name!r}; try again shortly")
        self._inputs += count
        self._requests += 1
        try:
            return await self._call(method, *args)
        finally:
            self._inputs -= count
            self._requests -= 1
