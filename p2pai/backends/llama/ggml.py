"""ctypes access to the ggml that llama-cpp-python ships, for what its bindings leave out.

The `.so.0` names matter: libllama links them, and loading the unversioned
copies would create a second ggml with its own, empty, backend registry.
This is the one module that knows these symbols and layouts (ggml-backend.h);
tests/test_ggml_adapter.py fails when an upgrade changes them.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from collections.abc import Iterable
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


CPU_ONLY_LIBRARIES = frozenset({"ggml", "ggml-base", "ggml-cpu", "ggml-rpc"})
"""The ggml libraries of a build with no device but the CPU: every other backend (CUDA, ROCm, Metal,
Vulkan, BLAS, a CPU variant loaded at run time...) is a library of its own (ggml-cuda...)."""


def cpu_only(library_files: Iterable[str]) -> bool:
    """Whether these files of llama-cpp-python's lib directory are a CPU-only build's ggml. Anything
    else (another ggml library, or ggml linked into libllama: no ggml-cpu of its own) is not."""
    ggml_libraries = {name.split(".")[0].removeprefix("lib") for name in library_files}
    ggml_libraries = {name for name in ggml_libraries if name.startswith("ggml")}
    return "ggml-cpu" in ggml_libraries and ggml_libraries <= CPU_ONLY_LIBRARIES


def cpu_only_build() -> bool:
    """Whether the installed llama.cpp computes on the CPU alone, known from its files without loading it
    (only on Linux, where `unloaded_cpu_device` knows what ggml says of the CPU)."""
    spec = importlib.util.find_spec("llama_cpp")  # finds the package without importing it
    if not sys.platform.startswith("linux") or spec is None or spec.origin is None:
        return False
    directory = Path(os.environ.get("LLAMA_CPP_LIB_PATH") or Path(spec.origin).parent / "lib")
    try:
        return cpu_only(path.name for path in directory.iterdir())
    except OSError:
        return False


def unloaded_cpu_device() -> BackendDevice:
    """The CPU device as ggml-cpu describes it on Linux, without loading ggml: the first `model name`
    of /proc/cpuinfo, and all physical memory as both total and free."""
    description = "CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name") and ":" in line:
                    description = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return BackendDevice(name="CPU", description=description, backend="CPU", type="cpu", free=total, total=total)


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
