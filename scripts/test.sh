#!/usr/bin/env bash
# The test command of the README (and of CI): prepares the machine, then runs lint,
# types, the fast suite (unit + real Docker integration with stand-in servers) and the
# end-to-end suite (a real vLLM; its first-time preparation takes a few minutes).
#   bash scripts/test.sh            everything
#   bash scripts/test.sh --fast     lint, types and the fast suite only (no vLLM)
# Other arguments go to pytest, e.g. `bash scripts/test.sh --fast -k profiles`.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
FAST=0
if [[ "${1:-}" == "--fast" ]]; then FAST=1; shift; fi
source scripts/setup.sh

say "ruff"
ruff check .
say "mypy"
mypy
say "fast suite: unit tests and real-Docker integration tests"
pytest -m "not vllm" "$@"
if [[ $FAST == 1 ]]; then exit 0; fi
say "preparing the real vLLM (cached after the first run)"
bash scripts/prepare-vllm.sh
say "end-to-end suite: the supervisor in front of a real vLLM"
pytest -m vllm "$@"
say "done"
