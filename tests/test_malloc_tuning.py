"""The glibc malloc settings the node applies at start (p2pai/malloc_tuning.py)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from p2pai.malloc_tuning import tune_malloc

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings exist in glibc only")


@glibc
def test_the_settings_are_accepted() -> None:
    assert tune_malloc()


@glibc
def test_a_large_read_buffer_no_longer_costs_fresh_memory() -> None:
    """Minor page faults of 1000 small reads into 256 KiB buffers (what asyncio does), without and with."""
    probe = """
import resource, socket, sys
from p2pai.malloc_tuning import tune_malloc
if sys.argv[1] == "tuned":
    tune_malloc()
a, b = socket.socketpair()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(1000):
    a.send(b"x" * 190)
    b.recv(256 * 1024)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = {mode: int(subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True,
                                       check=True, timeout=60).stdout) for mode in ("default", "tuned")}
    assert faults["tuned"] < 50 < faults["default"]


@glibc
def test_a_tensor_process_reuses_large_buffers() -> None:
    """Minor page faults of a 72 MB buffer (Whisper base's attention scores) made, written and freed
    ten times on a thread, as CTranslate2 does per layer: every time fresh memory by default, once kept."""
    probe = """
import ctypes, resource, sys, threading
from p2pai.malloc_tuning import keep_tensor_memory
if sys.argv[1] == "tuned":
    assert keep_tensor_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def work():
    for _ in range(10):
        buffer = libc.malloc(72_000_000)
        ctypes.memset(buffer, 1, 72_000_000)
        libc.free(buffer)

before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = {mode: int(subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True,
                                       check=True, timeout=60).stdout) for mode in ("default", "tuned")}
    pages = 72_000_000 // 4096
    assert faults["tuned"] < 2 * pages < 5 * pages < faults["default"], faults
