"""ctypes access to the ggml that llama-cpp-python ships, for what its bindings leave out.

The `.so.0` names matter: libllama links them, and loading the unversioned
copies would create a second ggml with its own, empty, backend registry.
This is the one module that knows these symbols and layouts (ggml-backend.h);
tests/test_ggml_adapter.py fails when an upgrade changes them.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

GGML_BACKEND_DEVICE_TYPE_CPU = 0
DEVICE_TYPES = ("cpu", "gpu", "igpu", "accel", "meta")
"""ggml-backend.h's `enum ggml_backend_dev_type`, in order."""


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
    ggml.ggml_backend_dev_count.argtypes = []
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_by_name.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_dev_by_name.restype = ctypes.c_void_p
    for text in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(ggml, text).argtypes = [ctypes.c_void_p]
        getattr(ggml, text).restype = ctypes.c_char_p
    ggml.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_type.restype = ctypes.c_int
    ggml.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)
    ]
    ggml.ggml_backend_dev_memory.restype = None
    ggml.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_reg_name.restype = ctypes.c_char_p
    return ggml


def cpu_device() -> int:
    return libggml().ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)


@dataclass(frozen=True)
class BackendDevice:
    """One of ggml's backend devices, as llama.cpp would offload to it."""

    name: str
    """ggml's device name: CPU, CUDA0, ROCm0, Metal, Vulkan0, RPC[host:port]..."""
    description: str
    """The hardware: "NVIDIA GeForce RTX 4090", the CPU's model name..."""
    backend: str
    """The registry it comes from: CPU, CUDA, ROCm, Metal, Vulkan, BLAS, RPC..."""
    type: str
    """One of DEVICE_TYPES."""
    free: int
    total: int


def backend_devices() -> list[BackendDevice]:
    """Every device ggml has registered, in registry order (CUDA, ROCm, Metal and Vulkan alike)."""
    ggml = libggml()
    found = []
    for index in range(ggml.ggml_backend_dev_count()):
        device = ggml.ggml_backend_dev_get(index)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        ggml.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
        kind = ggml.ggml_backend_dev_type(device)
        found.append(BackendDevice(
            name=_text(ggml.ggml_backend_dev_name(device)),
            description=_text(ggml.ggml_backend_dev_description(device)),
            backend=_text(ggml.ggml_backend_reg_name(ggml.ggml_backend_dev_backend_reg(device))),
            type=DEVICE_TYPES[kind] if 0 <= kind < len(DEVICE_TYPES) else f"type-{kind}",
            free=free.value,
            total=total.value,
        ))
    return found


def device_by_name(name: str) -> int | None:
    """A registered device's handle, None if there is no such device."""
    return libggml().ggml_backend_dev_by_name(name.encode()) or None


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", errors="replace") if value else ""


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
