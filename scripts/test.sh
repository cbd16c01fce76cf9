#!/usr/bin/env bash
# Install p2pai with its test dependencies into ./.venv, lint and type-check it, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh all,test
py=.venv/bin/python
[ -n "${VIRTUAL_ENV:-}" ] && py="$VIRTUAL_ENV/bin/python"
"$py" -m ruff check .  # lint: configured in pyproject.toml
"$py" -m mypy  # types of p2pai/: configured in pyproject.toml
exec "$py" -m pytest -q -p no:cacheprovider "$@"
