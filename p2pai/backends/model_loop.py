"""The one thread that makes every llama.cpp call of a model, in FIFO order.

llama.cpp decodes about twice as fast when all compute of a process happens on
one thread (see FACTS.md). In a model's process (child.py) that thread runs
`ModelLoop.run`: it takes posted calls one after another and, while none waits,
steps the model's scheduler (a `Stepper`) one decode at a time. Other threads
only post calls and wake it.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Protocol

_WAKE = object()
"""Posted only to wake an idle loop: the stepper has new work."""
_STOP = object()


class Stepper(Protocol):
    """Work done in small steps between calls (the batch scheduler)."""

    def busy(self) -> bool:
        """There is work for `step`; read from other threads too, so it must be cheap."""
        ...

    def step(self) -> None:
        """Do one bounded piece of work; never raises."""
        ...


class ModelLoop:
    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stepper: Stepper | None = None

    def attach(self, stepper: Stepper) -> None:
        """Step `stepper` whenever no call waits and it is busy (set on the loop's thread)."""
        self._stepper = stepper

    def post(self, call: Callable[[], None]) -> None:
        """Run `call` on the loop's thread after the calls posted before it (any thread)."""
        self._jobs.put(call)

    def wake(self) -> None:
        """The stepper got work: make an idle loop look at it (any thread)."""
        self._jobs.put(_WAKE)

    def stop(self) -> None:
        """End `run` after the calls already posted (any thread)."""
        self._jobs.put(_STOP)

    def run(self) -> None:
        """Serve posted calls and steps until `stop`; runs on the model's thread."""
        while True:
            job = self._next()
            if job is _STOP:
                return
            if job is not _WAKE:
                job()  # type: ignore[operator]

    def _next(self) -> object:
        """The next posted call; while the stepper is busy and none waits, one step (then _WAKE)."""
        stepper = self._stepper
        if stepper is None or not stepper.busy():
            return self._jobs.get()
        try:
            return self._jobs.get_nowait()
        except queue.Empty:
            stepper.step()
            return _WAKE
