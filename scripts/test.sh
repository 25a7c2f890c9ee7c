#!/usr/bin/env bash
# The test suite (fast unit tests; slow training, DDP and wheel-install tests included). Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` for the quick ladder only.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
