#!/usr/bin/env bash
# Install p2pai with its test dependencies into ./.venv and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh all,test
py=.venv/bin/python
[ -n "${VIRTUAL_ENV:-}" ] && py="$VIRTUAL_ENV/bin/python"
exec "$py" -m pytest -q -p no:cacheprovider "$@"
