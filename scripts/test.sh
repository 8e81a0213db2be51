#!/usr/bin/env bash
# The test command: sets up (or reuses) .venv, then runs ruff (lint and format), mypy on the core, and the whole
# pytest suite (extra arguments go to pytest).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/scripts/env.sh"
cd "$root"
"$SAMMED_VENV/bin/ruff" check .
"$SAMMED_VENV/bin/ruff" format --check .
"$SAMMED_VENV/bin/mypy"
"$SAMMED_VENV/bin/python" -m pytest "$@"
