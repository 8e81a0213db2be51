#!/usr/bin/env bash
# The test command: sets up (or reuses) .venv, then runs ruff and the whole pytest suite.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/scripts/env.sh"
cd "$root"
"$SAMMED_VENV/bin/ruff" check .
"$SAMMED_VENV/bin/python" -m pytest "$@"
