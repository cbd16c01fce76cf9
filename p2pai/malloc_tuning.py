"""glibc malloc settings for processes that spend their time reading sockets.

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
TRIM_BYTES = 8 * 1024 * 1024  # free memory at the top of the heap kept, not returned to the OS
MMAP_BYTES = 1024 * 1024  # blocks from this size up get their own mapping (a 256 KiB read buffer does not)


def tune_malloc() -> bool:
    """Apply the settings; False where the C library is not glibc (they are only an optimisation)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES))
