#!/usr/bin/env bash
# The demo command: sets up (or reuses) .venv, then runs `sammed demo` on the bundled example CT.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/scripts/env.sh"
cd "$root"
"$SAMMED_VENV/bin/sammed" demo --out "${1:-$root/out/demo}"
