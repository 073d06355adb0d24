#!/usr/bin/env bash
# Builds (or finds) the Kueue controller binary and its manifests; prints the version folder.
#
# Kueue is built from its Go module (sigs.k8s.io/kueue/cmd/kueue) at KUEUE_VERSION, and the CRDs
# come from the same module's config/components/crd/bases, so binary and CRDs always match.
# Everything is cached under $VLM_CACHE (default ~/.cache/vlm-trainer-operator)/kueue/<version>:
#   bin/kueue   the controller (kueue-manager)
#   crds/       the CRD manifests
#   webhook-manifests.yaml   its webhook configurations (service-based; tests/cluster/kueue.py
#                            points them at a loopback URL)
# Only the first run is slow (about five minutes on 2 cores); later runs only print the folder.
# Set KUEUE_BIN to a kueue binary you already have to skip the build (the CRDs still come from
# the module cache).
set -euo pipefail
KUEUE_VERSION="${KUEUE_VERSION:-v0.17.0}"
cache="${VLM_CACHE:-$HOME/.cache/vlm-trainer-operator}"
dir="$cache/kueue/$KUEUE_VERSION"
mkdir -p "$dir/bin"
log() { echo "[hack/kueue] $*" >&2; }

if [ ! -x "$dir/bin/kueue" ]; then
  if [ -n "${KUEUE_BIN:-}" ]; then
    install -m 0755 "$KUEUE_BIN" "$dir/bin/kueue"
  else
    log "building kueue $KUEUE_VERSION (first time only; about five minutes on 2 cores)"
    # A temporary GOBIN so a half-written binary never lands in the cache.
    tmp=$(mktemp -d)
    CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags "-s -w" \
      "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
    mv "$tmp/kueue" "$dir/bin/kueue"
    rm -rf "$tmp"
  fi
fi

if [ ! -f "$dir/crds/.done" ]; then
  # go install above already filled the module cache; outside a module, download by path.
  mod=$(cd / && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$dir/crds" && mkdir -p "$dir/crds"
  cp "$mod"/config/components/crd/bases/*.yaml "$dir/crds/"
  cp "$mod"/config/components/webhook/manifests.yaml "$dir/webhook-manifests.yaml"
  touch "$dir/crds/.done"
fi
echo "$dir"
