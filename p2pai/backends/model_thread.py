"""A dedicated OS thread that runs every call for one model, in FIFO order.

llama.cpp decodes about twice as fast when all compute of a process happens on
one thread (see FACTS.md), and the event loop must never block on inference,
so each engine funnels its work through one of these. Between calls the thread
drives the model's scheduler (a `Stepper`) one step at a time while it has work.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, TypeVar

from .base import QueueFullError

T = TypeVar("T")

_WAKE = object()
"""Queued only to wake an idle thread: the stepper has new work."""


class Stepper(Protocol):
    """Work the thread does in small steps, between calls (the batch scheduler)."""

    def busy(self) -> bool:
        """There is work for `step`; read without the thread's help, so it must be cheap."""
        ...

    def step(self) -> None:
        """Do one bounded piece of work; never raises."""
        ...


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """Hand a result to the event loop; after shutdown there is nobody left to tell."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


@dataclass
class _Job:
    run: Callable[[], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    started: bool = False


class ModelThread:
    """Runs submitted callables one after another on a single daemon thread.

    `max_pending` bounds how many jobs may wait behind the running one: past
    that, submissions fail fast with QueueFullError instead of piling up.
    """

    def __init__(self, name: str, max_pending: int = 64) -> None:
        self._name = name
        self._max_pending = max_pending
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stepper: Stepper | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.pending = 0
        """Jobs submitted and not yet started."""
        self.running = 0

    def _ensure_started(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"model:{self._name}", daemon=True)
            self._thread.start()

    def attach(self, stepper: Stepper) -> None:
        """Run `stepper.step()` whenever no call is queued and it is busy."""
        self._stepper = stepper

    def wake(self) -> None:
        """The stepper got work: make an idle thread look at it."""
        self._ensure_started()
        self._jobs.put(_WAKE)

    def _next_job(self) -> Any:
        """The next queued call; while the stepper is busy and no call waits, one step (then _WAKE)."""
        stepper = self._stepper
        if stepper is None or not stepper.busy():
            return self._jobs.get()
        try:
            return self._jobs.get_nowait()
        except queue.Empty:
            stepper.step()
            return _WAKE

    def _loop(self) -> None:
        while True:
            job = self._next_job()
            if job is _WAKE:
                continue
            if job is None:
                return
            with self._lock:
                if job.cancelled.is_set():
                    continue  # already taken off the pending count by _drop
                job.started = True
                self.pending -= 1
                self.running += 1
            try:
                job.run()
            finally:
                with self._lock:
                    self.running -= 1

    def _enqueue(self, job: _Job, bounded: bool = True) -> None:
        with self._lock:
            if bounded and self.pending >= self._max_pending:
                raise QueueFullError(f"model {self._name!r} has {self.pending} requests waiting; try again shortly")
            self.pending += 1
        self._ensure_started()
        self._jobs.put(job)

    def _drop(self, job: _Job) -> None:
        """The caller went away: a job that has not started leaves the queue count at once."""
        with self._lock:
            if not job.started and not job.cancelled.is_set():
                self.pending -= 1
            job.cancelled.set()

    async def call(self, fn: Callable[..., T], *args: Any, bounded: bool = True) -> T:
        """Run `fn(*args)` on the model thread and return its result.

        `bounded=False` skips the queue limit, for housekeeping such as freeing the model.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def run() -> None:
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the awaiting coroutine
                _call_soon(loop, settle, None, exc)
            else:
                _call_soon(loop, settle, result, None)

        job = _Job(run)
        self._enqueue(job, bounded)
        try:
            return await future
        finally:
            self._drop(job)

    def stop(self) -> None:
        """Let the thread exit after the jobs already queued."""
        if self._thread is not None:
            self._jobs.put(None)
