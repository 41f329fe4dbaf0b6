#!/usr/bin/env bash
# The README's demo command: prepares the machine (Docker Engine, Compose, the venv, and on
# first use a real vLLM CPU build with SmolLM2 and MiniLM: a few minutes, cached in .cache/),
# then runs the supervisor in front of them until Ctrl-C. Once it answers, it prints where
# everything is (proxy, admin API, status page, token), the idle timeouts, the calls to try
# and how to stop.
#   bash scripts/demo.sh            real vLLM (compose/demo-vllm.yaml)
#   bash scripts/demo.sh --standin  a stand-in OpenAI server that loads in 3 s (no vLLM)
# DEMO_PORT, DEMO_ADMIN_PORT (8080, 8081), DEMO_PROJECT (model-supervisor-demo) and, with
# --standin, DEMO_STANDIN_PORT (9101) move it, e.g. beside another demo (the tests do).
# Ctrl-C stops the supervisor, then removes the demo's containers (its own Compose project
# only).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
source scripts/setup.sh

demo_say() { printf '[demo] %s\n' "$*"; }

PORT="${DEMO_PORT:-8080}"
PROXY="http://127.0.0.1:$PORT"
PROJECT="${DEMO_PROJECT:-model-supervisor-demo}"
# What the supervisor and Compose read on top of the config (see the README's Configuration).
SETTINGS=("SUPERVISOR_LISTEN=127.0.0.1:$PORT"
          "SUPERVISOR_ADMIN__LISTEN=127.0.0.1:${DEMO_ADMIN_PORT:-8081}"
          "SUPERVISOR_COMPOSE__PROJECT=$PROJECT")
if [[ "${1:-}" == "--standin" ]]; then
  CONFIG=compose/demo-supervisor.yaml COMPOSE=(-f compose/demo.yml)
  STANDIN_PORT="${DEMO_STANDIN_PORT:-9101}"
  SETTINGS+=("DEMO_STANDIN_PORT=$STANDIN_PORT"
             "SUPERVISOR_MODELS__demo-chat__UPSTREAM=http://127.0.0.1:$STANDIN_PORT")
  MODEL=demo-chat WAIT="about 3 s"
else
  bash scripts/prepare-vllm.sh
  CONFIG=compose/demo-vllm.yaml COMPOSE=(-f compose/vllm-cpu.yml --env-file .cache/vllm.env)
  MODEL=smollm2 WAIT="30-60 s on 2 cores: vLLM loads the model"
fi
env "${SETTINGS[@]}" model-supervisor check-config "$CONFIG"

SERVER=""
cleanup() {
  trap '' INT TERM HUP  # a second Ctrl-C does not cut the removal short
  if [[ -n "$SERVER" ]] && kill -0 "$SERVER" 2>/dev/null; then
    kill -TERM "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
  fi
  demo_say "the supervisor has stopped; now removing the demo's containers (Compose project $PROJECT)"
  env "${SETTINGS[@]}" docker compose "${COMPOSE[@]}" -p "$PROJECT" --profile '*' \
    down --timeout 10 >/dev/null 2>&1 || true
  demo_say "done: nothing of the demo is left running"
}
trap cleanup EXIT

# In the background, so that this script can say when it is ready. Ctrl-C reaches this
# script (the supervisor, started in the background, may ignore it): it asks the
# supervisor to stop, waits for it, and cleanup removes the containers after.
env "${SETTINGS[@]}" model-supervisor serve --config "$CONFIG" &
SERVER=$!
trap 'kill -TERM "$SERVER" 2>/dev/null || true' INT TERM HUP

env "${SETTINGS[@]}" python scripts/demo_ready.py "$CONFIG" "$SERVER"
cat <<TXT
  Calls to try. The first request starts the model ($WAIT) and is held until it
  answers; see the X-Supervisor-* headers:
    curl -s $PROXY/v1/models
    curl -si $PROXY/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "$MODEL", "max_tokens": 32, "messages": [{"role": "user", "content": "Hi!"}]}'

  The second is answered at once; streaming works too (add "stream": true).
  With the OpenAI SDK: OpenAI(base_url="$PROXY/v1", api_key="unused").
  Metrics: curl -s $PROXY/metrics | grep ^supervisor_
TXT
if [[ "$MODEL" == smollm2 ]]; then
cat <<'TXT'
  A prompt over 2048 tokens swaps smollm2 to its 8K profile (X-Supervisor-Profile: smol-8k);
  one over 8192 tokens is refused with the limit. Embeddings: "model": "minilm" on /v1/embeddings.
  SmolLM2-135M is a tiny model picked to run on 2 CPU cores: its answers are often wrong or
  odd. That is the model, not the proxy; what the demo shows is the starting, holding,
  swapping and stopping around it.
TXT
else
cat <<'TXT'
  The stand-in answers with canned text: it shows the proxy's behaviour, not a model's.
TXT
fi
cat <<'TXT'

  Stop: Ctrl-C. The supervisor stops first (it leaves the containers running, as it does
  for a restart), then this script removes the demo's containers.

TXT

# `wait` returns early when a trapped signal arrives: wait again until the server has ended.
status=0
while :; do
  wait "$SERVER" && status=0 || status=$?
  if ((status > 128)) && kill -0 "$SERVER" 2>/dev/null; then continue; fi
  break
done
exit "$status"
