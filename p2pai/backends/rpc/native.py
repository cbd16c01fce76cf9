"""ctypes access to the libggml-rpc that llama-cpp-python ships.

The `.so.0` names matter: libllama links them, and loading the unversioned
copies would create a second ggml with its own, empty, backend registry.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache
from pathlib import Path

GGML_BACKEND_DEVICE_TYPE_CPU = 0


def _lib_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


@cache
def _libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    # ggml aborts on a dead RPC peer; without this it first tries to attach gdb.
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    import llama_cpp  # noqa: F401 - loads libllama and with it the shared ggml

    lib_dir = _lib_dir()
    ggml = ctypes.CDLL(str(lib_dir / "libggml.so.0"), mode=ctypes.RTLD_GLOBAL)
    rpc = ctypes.CDLL(str(lib_dir / "libggml-rpc.so.0"), mode=ctypes.RTLD_GLOBAL)
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    ggml.ggml_backend_register.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_register.restype = None
    rpc.ggml_backend_rpc_start_server.argtypes = [
        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)
    ]
    rpc.ggml_backend_rpc_start_server.restype = None
    rpc.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    rpc.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    return ggml, rpc


def serve_forever(host: str, port: int, threads: int, cache_dir: str | None) -> None:
    """Run llama.cpp's RPC server on the CPU device; returns only if it cannot start."""
    ggml, rpc = _libs()
    cpu = ggml.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
    devices = (ctypes.c_void_p * 1)(cpu)
    rpc.ggml_backend_rpc_start_server(
        f"{host}:{port}".encode(), cache_dir.encode() if cache_dir else None, threads, 1, devices
    )


def register_server(endpoint: str) -> None:
    """Make the RPC server at `endpoint` a device for the next Llama created in this process.

    llama.cpp connects at once and aborts the process if it cannot, so callers
    check the endpoint first; a registered device can never be removed.
    """
    ggml, rpc = _libs()
    reg = rpc.ggml_backend_rpc_add_server(endpoint.encode())
    if not reg:
        raise RuntimeError(f"the RPC server at {endpoint} reports no device")
    ggml.ggml_backend_register(reg)


def protocol_version() -> str:
    """The RPC protocol this build speaks, from the header llama-cpp-python installs.

    The library does not export it; "" when the header is missing, and then
    only llama.cpp's own hello check guards against a mismatch.
    """
    import re

    header = _lib_dir().parent.parent / "include" / "ggml-rpc.h"
    try:
        text = header.read_text()
    except OSError:
        return ""
    parts = [re.search(rf"RPC_PROTO_{part}_VERSION\s+(\d+)", text) for part in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(match.group(1) for match in parts) if all(parts) else ""  # type: ignore[union-attr]
