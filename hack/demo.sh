#!/usr/bin/env bash
# make demo: the whole flow on an embedded local cluster, as a user would type it.
#   1. a local control plane and two fake GPU nodes (the pod runner plays the kubelet)
#   2. helm install the operator (its pod runs under the chart's ServiceAccount)
#   3. a PVC with the tiny model and the demo data, made by a Job with the trainer image
#   4. kubectl apply the tiny-cpu TrainingShape and the SFT TrainerJob from examples/
#   5. watch it train, list the Checkpoints, see the final one promoted, evaluate the model
# KEEP=1 leaves the cluster running afterwards (KUBECONFIG=.devcluster/kubeconfig).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD:$PWD/operator:$PWD/trainer_image" HF_HUB_OFFLINE=1
py=.venv/bin/python
dir="$PWD/.devcluster"
bin="$(./hack/k8s/build.sh)"
kubectl="$bin/kubectl"
helm="$bin/helm"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }
cleanup() { [ "${KEEP:-0}" = 1 ] || $py -m tests.cluster down --dir "$dir" >/dev/null; }
trap cleanup EXIT

step "1. local Kubernetes: etcd, kube-apiserver, controller-manager, scheduler, pod runner"
$py -m tests.cluster up --dir "$dir"
export KUBECONFIG="$dir/kubeconfig"
show "$kubectl" get nodes -o custom-columns='NAME:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,GPUS:.status.allocatable.nvidia\.com/gpu'

step "2. install the operator with Helm"
show "$helm" install vlm charts/vlm-trainer-operator --namespace vlm-system --create-namespace \
  --set storage.checkpoints=pvc://vlm-demo/checkpoints --set storage.models=pvc://vlm-demo/models/published \
  --set logFormat=text --wait --timeout 120s
show "$kubectl" -n vlm-system get deploy,pods

step "3. a PVC with the tiny Qwen3-VL model and the demo datasets (built offline by a Job)"
"$kubectl" apply -f - <<'YAML'
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: vlm-demo, namespace: default}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 5Gi}}}
---
apiVersion: batch/v1
kind: Job
metadata: {name: demo-setup, namespace: default}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: setup
        image: vlmtrain/vlm-trainer:0.1.0
        command: [sh, -c, "vlm-trainer make-tiny-model /data/models/tiny-qwen3-vl && vlm-trainer make-demo-data /data/data"]
        volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, persistentVolumeClaim: {claimName: vlm-demo}}]
YAML
show "$kubectl" wait --for=condition=Complete job/demo-setup --timeout=300s

step "4. apply a TrainingShape and a TrainerJob (examples/)"
show "$kubectl" apply -f examples/shapes/tiny-cpu.yaml
show "$kubectl" apply -f examples/jobs/sft.yaml

step "5. watch it train (kubectl get tj), then wait for Succeeded"
for _ in $(seq 1 60); do
  "$kubectl" get tj sft-demo --no-headers -o custom-columns='NAME:.metadata.name,PHASE:.status.phase,STEP:.status.progress.step,TOTAL:.status.progress.totalSteps,LOSS:.status.progress.loss,CHECKPOINT:.status.latestCheckpoint'
  phase=$("$kubectl" get tj sft-demo -o jsonpath='{.status.phase}')
  [ "$phase" = Succeeded ] || [ "$phase" = Failed ] && break
  sleep 5
done
show "$kubectl" wait --for=condition=Succeeded tj/sft-demo --timeout=600s

step "6. checkpoints, and the final one promoted to a named model"
for _ in $(seq 1 60); do
  phase=$("$kubectl" get ckpt sft-demo-final -o jsonpath='{.status.phase}' 2>/dev/null || true)
  [ "$phase" = Promoted ] || [ "$phase" = Failed ] && break
  sleep 3
done
show "$kubectl" get ts,tj,ckpt
uri=$("$kubectl" get ckpt sft-demo-final -o jsonpath='{.status.promotion.uri}')
[ -n "$uri" ] || { echo "promotion did not finish"; "$kubectl" describe ckpt sft-demo-final; exit 1; }
model="$dir/runner/pvc/default/vlm-demo/${uri#pvc://vlm-demo/}"
echo "promoted model: $uri  (on this machine: $model)"

step "7. the promoted model answers the held-out demo questions"
show .venv/bin/vlm-trainer eval --model "$model" --data "$dir/runner/pvc/default/vlm-demo/data/sft_eval.jsonl" --num-threads 2
if [ "${KEEP:-0}" = 1 ]; then
  echo "cluster left running: export KUBECONFIG=$KUBECONFIG; make cluster-down to stop it"
fi
