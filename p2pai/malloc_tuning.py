"""glibc malloc settings: for processes that spend their time reading sockets, and for a
CTranslate2 model's process, which spends its time on large tensors.

asyncio's socket transports recv() into a fresh 256 KiB bytes object and shrink it to
what arrived. With glibc's default thresholds that block is given back to the OS and
faulted in again on every read: an asyncio Protocol read of a 190-byte message cost
45 µs of CPU on our 2-core machine, 20 µs with these settings (a plain 256 KiB recv()
24 µs against 4). Every read of the node pays it: HTTP requests, peers' answers,
llama.cpp RPC messages. The price is up to TRIM_BYTES of freed heap kept for reuse.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
M_ARENA_MAX = -8
KEEP_ALL_BYTES = 2**31 - 1  # the largest trim threshold mallopt takes (an int): freed memory is never returned
TRIM_BYTES = 8 * 1024 * 1024  # free memory at the top of the heap kept, not returned to the OS
MMAP_BYTES = 1024 * 1024  # blocks from this size up get their own mapping (a 256 KiB read buffer does not)


def tune_malloc() -> bool:
    """Apply the settings; False where the C library is not glibc (they are only an optimisation)."""
    return _mallopt((M_TRIM_THRESHOLD, TRIM_BYTES), (M_MMAP_THRESHOLD, MMAP_BYTES))


def keep_tensor_memory() -> bool:
    """For a CTranslate2 model's process, before it starts a thread: one heap, no block mapped on its
    own, nothing given back, so that the buffers of one request are reused by the next.

    CTranslate2 allocates and frees buffers of tens of MiB in every layer (Whisper base's encoder
    attention scores alone are 8 x 1500 x 1500 floats, 72 MB, for any clip: a window is 30 s).
    glibc maps every block above its mmap threshold (32 MiB at most) afresh, and a thread's own
    arena maps any block larger than its 64 MiB heaps, so each buffer was faulted in page by page,
    on every use: 325,000 minor faults and 1.0-1.2 s of system time for a 3-second clip out of
    4.2 s of CPU, 3 faults and 0.1 s with these settings (bench/README.md, audio). The price: the
    process keeps its peak heap (Whisper base: 365 MB resident instead of 330), which the next
    request needs again anyway. Threads share the one arena; CTranslate2 allocates per layer, not
    per element, so they hardly wait for each other."""
    return _mallopt((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEEP_ALL_BYTES))


def _mallopt(*settings: tuple[int, int]) -> bool:
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    return all([bool(mallopt(option, value)) for option, value in settings])
