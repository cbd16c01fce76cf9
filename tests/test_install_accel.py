"""scripts/install.sh chooses llama.cpp's accelerator from the toolchains it finds: run in its
deciding mode (`--decide`: prints the choice, installs nothing) with a PATH of stub tools."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "scripts" / "install.sh"
BASH = shutil.which("bash") or "/bin/bash"

LINUX = {"uname": "#!/bin/sh\n[ \"$1\" = -m ] && echo x86_64 || echo Linux\n"}
APPLE = {"uname": "#!/bin/sh\n[ \"$1\" = -m ] && echo arm64 || echo Darwin\n"}
OK = "#!/bin/sh\nexit 0\n"
VULKAN_PKG = "#!/bin/sh\n[ \"$*\" = '--exists vulkan' ]\n"
NVIDIA_SMI = "#!/bin/sh\n[ \"$1\" = -L ] && echo 'GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-00000000)'\n"
NO_NVIDIA_GPU = "#!/bin/sh\necho 'NVIDIA-SMI has failed: no NVIDIA driver.'\nexit 9\n"
ROCMINFO = "#!/bin/sh\necho '  Name:                    gfx1100'\n"
CUDA_GPU = {"nvcc": OK, "nvidia-smi": NVIDIA_SMI}

CASES = [
    ("nothing", LINUX, {}, "cpu", "no nvcc or hipcc with a GPU", ""),
    ("nvcc", {**LINUX, **CUDA_GPU}, {}, "cuda", "nvcc found at {bin}/nvcc, and nvidia-smi lists a GPU",
     "-DGGML_CUDA=ON"),
    ("nvcc without a GPU", {**LINUX, "nvcc": OK}, {}, "cpu", "{bin}/nvcc is here but no GPU is", ""),
    ("nvcc, driver not loaded", {**LINUX, "nvcc": OK, "nvidia-smi": NO_NVIDIA_GPU}, {}, "cpu",
     "{bin}/nvcc is here but no GPU is", ""),
    ("hipcc", {**LINUX, "hipcc": OK, "rocminfo": ROCMINFO}, {}, "hip", "hipcc found at {bin}/hipcc", "-DGGML_HIP=ON"),
    ("hipcc without a GPU", {**LINUX, "hipcc": OK}, {}, "cpu", "{bin}/hipcc is here but no GPU is", ""),
    ("nvcc beats hipcc", {**LINUX, **CUDA_GPU, "hipcc": OK, "rocminfo": ROCMINFO}, {}, "cuda", "nvcc",
     "-DGGML_CUDA=ON"),
    ("apple silicon", {**APPLE, "glslc": OK}, {}, "metal", "Apple silicon", "-DGGML_METAL=ON"),
    ("vulkan sdk", {**LINUX, "glslc": OK, "pkg-config": VULKAN_PKG}, {}, "vulkan", "Vulkan SDK", "-DGGML_VULKAN=ON"),
    ("glslc without vulkan headers", {**LINUX, "glslc": OK}, {}, "cpu", "no Vulkan SDK", ""),
    ("VULKAN_SDK set", {**LINUX, "glslc": OK}, {"VULKAN_SDK": "/sdk"}, "vulkan", "Vulkan SDK", "-DGGML_VULKAN=ON"),
    ("nvcc in CUDA_HOME only", {**LINUX, "nvidia-smi": NVIDIA_SMI}, {"CUDA_HOME": "{home}"}, "cuda",
     "nvcc found at {home}/bin/nvcc",
     "-DGGML_CUDA=ON"),
    ("forced cpu despite nvcc", {**LINUX, "nvcc": OK}, {"P2PAI_ACCEL": "cpu"}, "cpu", "forced by P2PAI_ACCEL", ""),
    ("forced vulkan", LINUX, {"P2PAI_ACCEL": "vulkan"}, "vulkan", "forced by P2PAI_ACCEL", "-DGGML_VULKAN=ON"),
]


def decide(tmp_path: Path, tools: dict[str, str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("dirname", "grep"):  # what the script needs besides bash builtins and the tools under test
        (bin_dir / name).symlink_to(shutil.which(name) or f"/usr/bin/{name}")
    for name, body in tools.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "nvcc").write_text(OK)
    (home / "bin" / "nvcc").chmod(0o755)
    base = {"PATH": str(bin_dir), "CUDA_HOME": str(tmp_path / "none"), "ROCM_PATH": str(tmp_path / "none")}
    base.update({key: value.format(home=home) for key, value in env.items()})
    return subprocess.run([BASH, str(SCRIPT), "--decide"], env=base, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("name, tools, env, accel, why, flag", CASES, ids=[case[0] for case in CASES])
def test_the_accelerator_follows_the_toolchain_found(
    tmp_path: Path, name: str, tools: dict[str, str], env: dict[str, str], accel: str, why: str, flag: str
) -> None:
    result = decide(tmp_path, tools, env)
    assert result.returncode == 0, result.stderr
    chosen, cmake = result.stdout.splitlines()
    assert chosen.startswith(f"llama.cpp accelerator: {accel} (")
    assert why.format(bin=tmp_path / "bin", home=tmp_path / "cuda") in chosen
    args = cmake.removeprefix("CMAKE_ARGS: ").split()
    assert args[:2] == ["-DGGML_RPC=ON", "-DGGML_NATIVE=OFF"]  # RPC always on
    assert args[2:] == ([flag] if flag else [])


def test_extra_cmake_args_are_kept_and_a_bad_choice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "again").mkdir()
    result = decide(tmp_path, {**LINUX, **CUDA_GPU}, {"CMAKE_ARGS": "-DCMAKE_CUDA_ARCHITECTURES=86"})
    assert result.stdout.splitlines()[1].endswith("-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=86")
    refused = decide(tmp_path / "again", LINUX, {"P2PAI_ACCEL": "tpu"})
    assert refused.returncode == 2 and "P2PAI_ACCEL must be cpu, cuda, hip, metal or vulkan" in refused.stderr
