"""Dynamic batching inside an ONNX model's process: the inputs of concurrent requests share runs.

Requests arrive tokenized on the receiving thread; the model thread (`run`) takes a batch,
runs it, and hands each request its rows once all of them are done. A batch starts with the
oldest waiting input and takes others of its length bucket (powers of two from 16 tokens), then
shorter ones: padding to the batch's longest input then wastes little. While requests come
concurrently (the last batch served several), a run waits up to `wait` seconds for as many
requests as the last batch had; a lone client never waits.

Running the batcher here rather than in the node: the node would need the token counts
(bucketing) and would add a message round trip per batch; see bench/README.md, embeddings.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .runtime import Tokens

MIN_BUCKET = 16


def bucket(length: int) -> int:
    """The padded length class of an input: 16, 32, 64... tokens."""
    return max(MIN_BUCKET, 1 << (length - 1).bit_length())


@dataclass(eq=False)
class Job:
    """One request: its inputs, and its rows as the runs produce them."""

    tag: int
    inputs: list[Tokens]
    rows: np.ndarray | None = None
    left: int = 0
    failed: bool = False
    tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.left = len(self.inputs)
        self.tokens = sum(len(tokens.ids) for tokens in self.inputs)


@dataclass(eq=False)
class _Item:
    job: Job
    index: int
    tokens: Tokens
    bucket: int


Compute = Callable[[Sequence[Tokens]], np.ndarray]
Finished = Callable[[Job, BaseException | None], None]


class Batcher:
    def __init__(self, compute: Compute, finished: Finished, max_batch: int, wait: float) -> None:
        self._compute = compute
        self._finished = finished
        self._max_batch = max_batch
        self._wait = wait
        self._pending: list[_Item] = []
        self._jobs_pending = 0
        """Jobs with inputs in `_pending`."""
        self._expected = 1
        """Jobs the last batch served: how many to wait for while requests come concurrently."""
        self._cond = threading.Condition()
        self._stopped = False

    def submit(self, job: Job) -> None:
        """Queue a request's inputs (any thread)."""
        items = [_Item(job, index, tokens, bucket(len(tokens.ids))) for index, tokens in enumerate(job.inputs)]
        with self._cond:
            self._pending.extend(items)
            self._jobs_pending += 1
            self._cond.notify()

    def stop(self) -> None:
        """End `run` after the batch in progress (any thread)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def run(self) -> None:
        """Run batches until `stop`; on the model thread."""
        while (batch := self._next_batch()) is not None:
            try:
                rows = self._compute([item.tokens for item in batch])
            except Exception as exc:  # noqa: BLE001 - the failure of this batch's requests, sent to them
                for job in {item.job for item in batch}:
                    self._fail(job, exc)
                continue
            for item, row in zip(batch, rows, strict=True):
                job = item.job
                if job.failed:
                    continue
                if job.rows is None:
                    job.rows = np.empty((len(job.inputs), *row.shape), dtype=rows.dtype)
                job.rows[item.index] = row
                job.left -= 1
                if job.left == 0:
                    self._finished(job, None)

    def _fail(self, job: Job, exc: BaseException) -> None:
        with self._cond:
            job.failed = True
            self._pending = [item for item in self._pending if item.job is not job]
            self._jobs_pending = len({item.job for item in self._pending})
        self._finished(job, exc)

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._pending and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            if self._expected > 1:
                deadline = time.monotonic() + self._wait
                while len(self._pending) < self._max_batch and self._jobs_pending < self._expected:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._stopped:
                        break
                    self._cond.wait(left)
            batch = self._take()
            self._expected = len({item.job for item in batch})
            return batch

    def _take(self) -> list[_Item]:
        """The oldest input, others of its bucket in arrival order, then shorter ones (longest first)."""
        pending = self._pending
        limit = pending[0].bucket
        same = [item for item in pending if item.bucket == limit]
        batch = same[: self._max_batch]
        if len(batch) < self._max_batch:
            shorter = sorted((item for item in pending if item.bucket < limit), key=lambda item: -item.bucket)
            batch += shorter[: self._max_batch - len(batch)]
        taken = set(map(id, batch))
        self._pending = [item for item in pending if id(item) not in taken]
        self._jobs_pending = len({item.job for item in self._pending})
        return batch
