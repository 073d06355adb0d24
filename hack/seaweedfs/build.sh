#!/usr/bin/env bash
# Builds (or finds) SeaweedFS's `weed` binary and prints the folder that holds it.
#
# `weed` serves the S3 API that the local stack and the storage tests use as a real object
# store. It is built from the Go module pinned in go.mod (a pseudo-version: SeaweedFS publishes
# no semver tags to the module proxy) and cached under $VLM_CACHE (default
# ~/.cache/vlm-trainer-operator) keyed by that version, so only the first run is slow (~4 min
# on 2 idle cores). Set VLM_WEED to a `weed` binary you already have to skip the build.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION="$(awk '/^require github.com\/seaweedfs\/seaweedfs / {print $3}' "$here/go.mod")"
cache="${VLM_CACHE:-$HOME/.cache/vlm-trainer-operator}"
bin="$cache/seaweedfs/$VERSION/bin"
log() { echo "[hack/seaweedfs] $*" >&2; }

if [ -n "${VLM_WEED:-}" ]; then
  [ -x "$VLM_WEED" ] || { log "VLM_WEED=$VLM_WEED is not an executable"; exit 1; }
  dirname "$VLM_WEED"
  exit 0
fi
mkdir -p "$bin"
if [ ! -x "$bin/weed" ]; then
  log "building weed $VERSION (first time only; several minutes on 2 cores)"
  # The .tmp + mv makes the cached binary appear whole or not at all, so an interrupted
  # build is redone instead of leaving a truncated executable behind.
  (cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin/weed.tmp" \
    github.com/seaweedfs/seaweedfs/weed)
  mv "$bin/weed.tmp" "$bin/weed"
fi
echo "$bin"
