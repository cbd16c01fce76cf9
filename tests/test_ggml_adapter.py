"""What p2pai/backends/llama/ggml.py takes from the ggml inside llama-cpp-python still holds: this
fails when an upgrade renames a symbol or reorders ggml-backend.h's device types (llama-cpp-python
is pinned in setup.cfg for that reason). Device detection is checked here through the real library."""

from __future__ import annotations

import json
import re

import pytest

from p2pai.backends.llama import ggml
from p2pai.backends.llama.devices import DEVICES_ENV, Device, detect, detect_in_child, gpus

SYMBOLS = (
    "ggml_backend_dev_count", "ggml_backend_dev_get", "ggml_backend_dev_by_name", "ggml_backend_dev_by_type",
    "ggml_backend_dev_name", "ggml_backend_dev_description", "ggml_backend_dev_type", "ggml_backend_dev_memory",
    "ggml_backend_dev_backend_reg", "ggml_backend_reg_name", "ggml_backend_dev_buffer_type", "ggml_backend_register",
)


def test_every_symbol_the_adapter_binds_is_exported() -> None:
    library = ggml.libggml()
    for name in SYMBOLS:
        assert hasattr(library, name), f"libggml no longer exports {name}"


def test_device_types_are_in_the_order_of_the_installed_header() -> None:
    header = (ggml.lib_dir().parent.parent / "include" / "ggml-backend.h").read_text()
    block = re.search(r"enum ggml_backend_dev_type \{(.*?)\}", header, re.S)
    assert block is not None, "ggml-backend.h has no enum ggml_backend_dev_type any more"
    names = re.findall(r"GGML_BACKEND_DEVICE_TYPE_(\w+)", block.group(1))
    assert tuple(name.lower() for name in names) == ggml.DEVICE_TYPES


def test_the_cpu_device_is_enumerated_with_its_memory() -> None:
    devices = ggml.backend_devices()
    cpu = [device for device in devices if device.type == "cpu"]
    assert len(cpu) == 1 and cpu[0].name == "CPU" and cpu[0].backend == "CPU"
    assert cpu[0].total > 2**28 and 0 < cpu[0].free <= cpu[0].total
    assert ggml.device_by_name("CPU") == ggml.cpu_device()
    assert ggml.device_by_name("no such device") is None


CPU_BUILD = ("libggml.so", "libggml.so.0", "libggml-base.so.0.25.3", "libggml-cpu.so", "libggml-rpc.so.0",
             "libllama.so", "libmtmd.so.0")


@pytest.mark.parametrize(("files", "cpu_only"), [
    (CPU_BUILD, True),
    ((*CPU_BUILD, "libggml-cuda.so"), False),
    ((*CPU_BUILD, "libggml-vulkan.so.0"), False),
    ((*CPU_BUILD, "libggml-metal.dylib"), False),
    ((*CPU_BUILD, "ggml-hip.dll"), False),
    ((*CPU_BUILD, "libggml-blas.so"), False),  # an accel device beside the CPU
    (("libggml.so", "libggml-base.so", "libggml-cpu-haswell.so", "libggml-cpu-x64.so"), False),  # loaded at run time
    (("libllama.so", "libmtmd.so"), False),  # ggml linked into libllama: no telling
])
def test_a_cpu_only_build_is_known_from_its_library_files(files: tuple[str, ...], cpu_only: bool) -> None:
    assert ggml.cpu_only(files) == cpu_only


async def test_the_cpu_of_a_cpu_only_build_is_described_as_ggml_describes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """What detection takes without loading llama.cpp is what ggml itself says of this machine."""
    monkeypatch.delenv(DEVICES_ENV, raising=False)
    assert ggml.cpu_only_build()
    assert ggml.backend_devices() == [ggml.unloaded_cpu_device()]
    without_child, from_child = await detect(), await detect_in_child()
    assert [d.model_copy(update={"free": 0}) for d in without_child] == [
        d.model_copy(update={"free": 0}) for d in from_child]  # what is available changes by the moment


async def test_detection_on_this_cpu_only_machine_finds_the_cpu_and_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEVICES_ENV, raising=False)
    devices = await detect()
    assert [(device.name, device.type, device.backend) for device in devices] == [("CPU", "cpu", "CPU")]
    assert devices[0].total > 0 and gpus(devices) == []


async def test_a_device_list_fed_in_replaces_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    fed = [{"name": "CUDA0", "description": "NVIDIA GeForce RTX 4090", "backend": "CUDA", "type": "gpu",
            "free": 20 << 30, "total": 24 << 30}]
    monkeypatch.setenv(DEVICES_ENV, json.dumps(fed))
    assert await detect() == [Device(**fed[0])]
    monkeypatch.setenv(DEVICES_ENV, "[{\"free\": -1}]")
    with pytest.raises(SystemExit, match=DEVICES_ENV):
        await detect()
