#!/usr/bin/env bash
# make demo: the whole flow on an embedded local cluster.
# Until the operator lands (issue 6) this brings the local cluster up, shows its fake GPU nodes
# and takes it down again; the TrainerJob walkthrough is added with the operator.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD"
py=.venv/bin/python
dir="$PWD/.devcluster"
trap '$py -m tests.cluster down --dir "$dir" >/dev/null' EXIT
$py -m tests.cluster up --dir "$dir"
export KUBECONFIG="$dir/kubeconfig"
kubectl="$(./hack/k8s/build.sh)/kubectl"
echo "== nodes (fake GPU nodes run by the pod runner)"
"$kubectl" get nodes -o custom-columns='NAME:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,GPUS:.status.allocatable.nvidia\.com/gpu'
echo "== a pod through the real scheduler and the pod runner"
"$kubectl" run demo-hello --image=busybox --restart=Never --command -- sh -c 'echo hello from $(hostname)'
"$kubectl" wait --for=jsonpath='{.status.phase}'=Succeeded pod/demo-hello --timeout=60s
echo "(the TrainerJob flow joins this demo with the operator)"
