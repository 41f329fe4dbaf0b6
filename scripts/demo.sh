#!/usr/bin/env bash
# The README's demo command: prepares the machine, then runs the supervisor in front
# of a demo model (a stand-in OpenAI server that takes 3 s to load) until Ctrl-C.
# On exit it removes the demo's containers (by its own Compose project only).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
source scripts/setup.sh

CONFIG=compose/demo-supervisor.yaml
PROJECT=model-supervisor-demo
model-supervisor check-config "$CONFIG"

cleanup() {
  say "removing the demo's containers (project $PROJECT)"
  docker compose -f compose/demo.yml -p "$PROJECT" --profile '*' down --timeout 5 >/dev/null 2>&1 || true
}
trap cleanup EXIT

cat <<'TXT'

  The supervisor listens on http://127.0.0.1:8080 ; nothing is running yet:
    curl -s 127.0.0.1:8080/v1/models

  The first request starts the model (about 3 s, then answered; see the X-Supervisor-* headers):
    curl -si 127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \
      -d '{"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]}'

  The second is answered at once; streaming works too:
    curl -sN 127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \
      -d '{"model": "demo-chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'

  After 2 idle minutes the container is stopped (watch: docker ps). Ctrl-C ends the demo.

TXT
model-supervisor serve --config "$CONFIG"
