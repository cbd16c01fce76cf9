"""The devices this machine computes on, as llama.cpp sees them.

    python -m p2pai.backends.llama.devices    prints them as JSON

Detection enumerates ggml's backend devices through the installed llama-cpp-python
(`ggml.backend_devices`), so CUDA, ROCm, Metal and Vulkan builds are covered by one
path and no vendor tool is needed. It runs in a short-lived child process: starting a
GPU backend creates a driver context (hundreds of MB of GPU memory with CUDA) that the
node must not hold for its whole life, and a broken driver can abort the process.
A build for the CPU alone (known from its library files, on Linux) needs no child: its
one device is described as ggml describes it.

P2PAI_DEVICES, a JSON list of devices, replaces detection: GPUs fed in for tests, or
fewer devices offered than the machine has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from . import ggml

log = logging.getLogger(__name__)

DEVICES_ENV = "P2PAI_DEVICES"
DETECT_TIMEOUT = 60.0
"""A CUDA context takes a few seconds to create; a hung driver must not hold the node back for ever."""
GPU_TYPES = ("gpu", "igpu")
"""Device types that take offloaded layers (an integrated GPU shares the host's memory)."""

Bytes = Annotated[int, Field(ge=0, le=1 << 60)]


class Device(BaseModel):
    """One compute device. Also what nodes announce, so every field is bounded."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    """ggml's device name: CPU, CUDA0, ROCm0, Metal, Vulkan0..."""
    description: str = Field(default="", max_length=256)
    """The hardware, e.g. "NVIDIA GeForce RTX 4090"."""
    backend: str = Field(default="", max_length=32)
    """The ggml backend serving it: CPU, CUDA, ROCm, Metal, Vulkan..."""
    type: str = Field(default="gpu", max_length=16)
    """cpu, gpu, igpu (integrated, host memory) or accel (BLAS, AMX: works beside the CPU)."""
    free: Bytes = 0
    total: Bytes = 0

    @property
    def is_gpu(self) -> bool:
        return self.type in GPU_TYPES


DEVICE_LIST: TypeAdapter[list[Device]] = TypeAdapter(list[Device])


def gpus(devices: list[Device]) -> list[Device]:
    """The GPUs llama.cpp offloads to: the discrete ones, else the integrated ones (llama.cpp's rule)."""
    return [device for device in devices if device.type == "gpu"] or [d for d in devices if d.type == "igpu"]


def enumerate_here() -> list[Device]:
    """This process's devices through the real library (loads llama.cpp and its GPU backends)."""
    return [_device(device) for device in ggml.backend_devices()]


def _device(device: ggml.BackendDevice) -> Device:
    import psutil

    free = device.free
    if device.type == "cpu":  # ggml reports all of RAM as free; what is available is what counts
        free = min(free or device.total, psutil.virtual_memory().available)
    return Device(name=device.name, description=device.description, backend=device.backend, type=device.type,
                  free=free, total=device.total)


async def detect() -> list[Device]:
    """This machine's devices (from P2PAI_DEVICES if set); [] when llama.cpp cannot tell. A CPU-only
    build of llama.cpp is known from its files: its one device is described without a child."""
    given = os.environ.get(DEVICES_ENV)
    if given:
        try:
            return DEVICE_LIST.validate_json(given)
        except ValidationError as exc:
            raise SystemExit(f"{DEVICES_ENV} is not a JSON list of devices: {exc}") from None
    if ggml.cpu_only_build():
        return [_device(ggml.unloaded_cpu_device())]
    return await detect_in_child()


async def detect_in_child() -> list[Device]:
    """The devices a child process finds through llama.cpp ([] when it cannot tell)."""
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "GGML_NO_BACKTRACE": "1"},
        )
    except OSError as exc:
        log.warning("cannot detect devices: %s", exc)
        return []
    try:
        out, err = await asyncio.wait_for(process.communicate(), DETECT_TIMEOUT)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        log.warning("device detection did not finish in %.0f s; announcing no devices", DETECT_TIMEOUT)
        return []
    except asyncio.CancelledError:  # the node stops: leave no child behind
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        raise
    try:
        if process.returncode != 0:
            raise ValueError(err.decode(errors="replace").strip()[-500:] or f"exit status {process.returncode}")
        return DEVICE_LIST.validate_json(out)
    except ValueError as exc:
        log.warning("device detection failed: %s", exc)
        return []


def main() -> None:
    logging.disable(logging.CRITICAL)
    json.dump([device.model_dump() for device in enumerate_here()], sys.stdout)


if __name__ == "__main__":
    main()
