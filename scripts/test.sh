#!/usr/bin/env bash
# The test command of the README (and of CI): prepares the machine, then runs lint,
# types, the import contracts (pyproject.toml, [tool.importlinter]), the fast suite (unit
# + real Docker integration with stand-in servers) and the end-to-end suite (a real vLLM; its first-time preparation takes a few minutes).
#   bash scripts/test.sh            everything
#   bash scripts/test.sh --fast     lint, types and the fast suite only (no vLLM)
# Other arguments go to pytest, e.g. `bash scripts/test.sh --fast -k profiles`.
# In a git work tree it fails when the tests modified a tracked file that was clean before
# (a test writes to a temporary folder; scripts/status-page-picture.sh refreshes the
# README's picture on purpose).
# Measured on 2 cores: the fast suite about 11 min, the slow one 1.5, the vLLM suite about
# 3.5, all about 18.5.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
FAST=0
if [[ "${1:-}" == "--fast" ]]; then FAST=1; shift; fi
source scripts/setup.sh

# Tracked files with changes; empty outside a git work tree.
changed_files() { git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null | sort || true; }
CHANGED_BEFORE="$(changed_files)"
check_work_tree() {
  local new
  new="$(comm -13 <(printf '%s\n' "$CHANGED_BEFORE") <(changed_files) | sed '/^$/d')"
  if [[ -n "$new" ]]; then
    say "the tests modified tracked files (a test must write to a temporary folder):"
    printf '  %s\n' "$new" >&2
    return 1
  fi
}

say "ruff"
ruff check .
say "mypy"
mypy
say "import contracts"
lint-imports
say "fast suite: unit tests and real-Docker integration tests"
pytest -m "not vllm and not slow" --durations=15 "$@"
check_work_tree
if [[ $FAST == 1 ]]; then exit 0; fi
say "slow suite: the live idle policy on real Docker (a few minutes)"
pytest -m "slow and not vllm" "$@"
check_work_tree
say "preparing the real vLLM (cached after the first run)"
bash scripts/prepare-vllm.sh
say "end-to-end suite: the supervisor in front of a real vLLM"
pytest -m vllm "$@"
check_work_tree
say "done"
