#!/usr/bin/env bash
# A local base image for the supervisor's Dockerfile, made without a registry: a minimal
# Debian root file system (mmdebstrap: python3 with venv and pip, CA certificates) imported
# into Docker. The tests build the image FROM it (build argument BASE); on a host that can
# pull, the default base (python:3.11-slim) serves instead.
#
#   bash scripts/base-image.sh        prints the image's tag; builds it first if missing
#
# The tag is a hash of this recipe (this file and the host's CA bundle), so the ~30 s build
# happens once per machine and recipe. The host's CA bundle replaces Debian's, so that pip
# in a build trusts what the host trusts (a TLS-inspecting proxy, for one).
set -euo pipefail

SUITE=bookworm
PACKAGES=python3-venv,ca-certificates,libstdc++6  # libstdc++6: tokenizers
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
MIRROR="${MS_DEBIAN_MIRROR:-}"
if [[ -z "$MIRROR" && -f /etc/apt/sources.list.d/debian.sources ]]; then
  MIRROR="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
fi
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

recipe="$(cat "${BASH_SOURCE[0]}"; echo "$SUITE $PACKAGES"; sha256sum "$CA_BUNDLE")"
TAG="model-supervisor/base:$SUITE-$(sha256sum <<<"$recipe" | cut -c1-12)"
if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "$TAG"
  exit 0
fi
if ! command -v mmdebstrap >/dev/null 2>&1; then
  echo "base-image.sh: mmdebstrap is missing (apt-get install mmdebstrap; scripts/setup.sh does)" >&2
  exit 1
fi
echo "base-image.sh: building $TAG from $MIRROR (about 30 s, once)" >&2
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! mmdebstrap --variant=essential --include="$PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="upload $CA_BUNDLE /etc/ssl/certs/ca-certificates.crt" \
    "$SUITE" - "$MIRROR" 2>"$log" \
  | docker import --change 'ENV LANG=C.UTF-8' \
      --change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" \
      --change 'CMD ["python3"]' - "$TAG" >/dev/null; then
  echo "base-image.sh: failed; mmdebstrap said:" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
# Earlier recipes' bases are of no further use.
docker image ls --format '{{.Repository}}:{{.Tag}}' model-supervisor/base \
  | grep -vxF "$TAG" | xargs -r docker image rm >/dev/null 2>&1 || true
echo "$TAG"
