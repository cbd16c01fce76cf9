"""Processes the node starts must not outlive it."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `signum` when the parent dies, even by SIGKILL (Linux only);
    exit now if the parent is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signum)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        sys.exit(1)
