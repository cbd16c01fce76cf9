"""ctypes access to the ggml that llama-cpp-python ships, for what its bindings leave out.

The `.so.0` names matter: libllama links them, and loading the unversioned
copies would create a second ggml with its own, empty, backend registry.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache
from pathlib import Path

GGML_BACKEND_DEVICE_TYPE_CPU = 0


def lib_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


@cache
def libggml() -> ctypes.CDLL:
    # ggml aborts on a dead RPC peer; without this it first tries to attach gdb.
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    import llama_cpp  # noqa: F401 - loads libllama and with it the shared ggml

    ggml = ctypes.CDLL(str(lib_dir() / "libggml.so.0"), mode=ctypes.RTLD_GLOBAL)
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_buffer_type.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_buffer_type.restype = ctypes.c_void_p
    ggml.ggml_backend_register.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_register.restype = None
    return ggml


def cpu_device() -> int:
    return libggml().ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)


def cpu_buffer_type() -> int:
    """The CPU device's buffer type: llama.cpp compares overrides against exactly this pointer."""
    return libggml().ggml_backend_dev_buffer_type(cpu_device())


class TensorBufferOverride(ctypes.Structure):
    """llama.h's `llama_model_tensor_buft_override` (llama-cpp-python declares the field as void*)."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def cpu_overrides(patterns: tuple[str, ...]) -> ctypes.Array[TensorBufferOverride]:
    """A NULL-terminated override list keeping tensors whose names match `patterns` in CPU memory.

    The array (and the pattern bytes it points to) must outlive the model load.
    """
    buft = cpu_buffer_type()
    entries = [TensorBufferOverride(pattern.encode(), buft) for pattern in patterns]
    return (TensorBufferOverride * (len(entries) + 1))(*entries, TensorBufferOverride(None, None))
