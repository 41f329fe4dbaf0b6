#!/usr/bin/env bash
# The test command of the README (and of CI): prepares the machine, then runs
# lint, types and every test suite. Extra arguments go to pytest
# (e.g. `bash scripts/test.sh -m "not docker"` for the fast unit tests alone).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
source scripts/setup.sh

say "ruff"
ruff check .
say "mypy"
mypy
say "pytest"
exec pytest "$@"
