#!/usr/bin/env bash
# The README's demo command: prepares the machine (Docker Engine, Compose, the venv, and on
# first use a real vLLM CPU build with SmolLM2 and MiniLM: a few minutes, cached in .cache/),
# then runs the supervisor in front of them until Ctrl-C.
#   bash scripts/demo.sh            real vLLM (compose/demo-vllm.yaml)
#   bash scripts/demo.sh --standin  a stand-in OpenAI server that loads in 3 s (no vLLM)
# On exit it removes the demo's containers (by its own Compose project only).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
source scripts/setup.sh

PROJECT=model-supervisor-demo
if [[ "${1:-}" == "--standin" ]]; then
  CONFIG=compose/demo-supervisor.yaml COMPOSE=(-f compose/demo.yml)
  MODEL=demo-chat WAIT="about 3 s"
else
  bash scripts/prepare-vllm.sh
  CONFIG=compose/demo-vllm.yaml COMPOSE=(-f compose/vllm-cpu.yml --env-file .cache/vllm.env)
  MODEL=smollm2 WAIT="30-60 s on 2 cores: vLLM loads the model"
fi
model-supervisor check-config "$CONFIG"

cleanup() {
  say "removing the demo's containers (project $PROJECT)"
  docker compose "${COMPOSE[@]}" -p "$PROJECT" --profile '*' down --timeout 10 >/dev/null 2>&1 || true
}
trap cleanup EXIT

cat <<TXT

  The supervisor listens on http://127.0.0.1:8080 ; nothing is running yet:
    curl -s 127.0.0.1:8080/v1/models

  The first request starts the model ($WAIT) and is held until it answers;
  see the X-Supervisor-* headers:
    curl -si 127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "$MODEL", "max_tokens": 32, "messages": [{"role": "user", "content": "Hi!"}]}'

  The second is answered at once; streaming works too (add "stream": true).
  With the OpenAI SDK: OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="unused").
  Metrics: curl -s 127.0.0.1:8080/metrics | grep ^supervisor_
TXT
if [[ "$MODEL" == smollm2 ]]; then
cat <<'TXT'
  A prompt over 2048 tokens swaps smollm2 to its 8K profile (X-Supervisor-Profile: smol-8k);
  one over 8192 tokens is refused with the limit. Embeddings: "model": "minilm" on /v1/embeddings.
TXT
fi
cat <<'TXT'
  After the idle timeout the container is stopped (watch: docker ps). Ctrl-C ends the demo.

TXT
model-supervisor serve --config "$CONFIG"
