"""ctypes access to the libggml-rpc that llama-cpp-python ships.

Loaded next to the ggml of `..llama.ggml` (see there why the `.so.0` names).
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache

from ..llama import ggml


@cache
def _rpc() -> ctypes.CDLL:
    ggml.libggml()
    rpc = ctypes.CDLL(str(ggml.lib_dir() / "libggml-rpc.so.0"), mode=ctypes.RTLD_GLOBAL)
    rpc.ggml_backend_rpc_start_server.argtypes = [
        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)
    ]
    rpc.ggml_backend_rpc_start_server.restype = None
    rpc.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    rpc.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    return rpc


def serve_forever(host: str, port: int, threads: int, cache_dir: str | None, device: str | None = None) -> None:
    """Run llama.cpp's RPC server on the named device (default: the CPU); returns only if it cannot start."""
    handle = ggml.device_by_name(device) if device else None
    if device and handle is None:
        print(f"llama.cpp has no device {device!r}; serving the CPU", file=sys.stderr, flush=True)
    devices = (ctypes.c_void_p * 1)(handle or ggml.cpu_device())
    _rpc().ggml_backend_rpc_start_server(
        f"{host}:{port}".encode(), cache_dir.encode() if cache_dir else None, threads, 1, devices
    )


def register_server(endpoint: str) -> None:
    """Make the RPC server at `endpoint` a device for the next Llama created in this process.

    llama.cpp connects at once and aborts the process if it cannot, so callers
    check the endpoint first; a registered device can never be removed.
    """
    reg = _rpc().ggml_backend_rpc_add_server(endpoint.encode())
    if not reg:
        raise RuntimeError(f"the RPC server at {endpoint} reports no device")
    ggml.libggml().ggml_backend_register(reg)


def protocol_version() -> str:
    """The RPC protocol this build speaks, from the header llama-cpp-python installs.

    The library does not export it; "" when the header is missing, and then
    only llama.cpp's own hello check guards against a mismatch.
    """
    import re

    header = ggml.lib_dir().parent.parent / "include" / "ggml-rpc.h"
    try:
        text = header.read_text()
    except OSError:
        return ""
    parts = [re.search(rf"RPC_PROTO_{part}_VERSION\s+(\d+)", text) for part in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(match.group(1) for match in parts) if all(parts) else ""  # type: ignore[union-attr]
