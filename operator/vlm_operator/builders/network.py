"""The NetworkPolicy of a TrainerJob: only the job's own trainer pods reach them, and only on
the rendezvous port (torchrun's c10d store and NCCL bootstrap, `MASTER_PORT`).

Selected: the job's trainer pods (task `train`). Ingress: from pods with the same job and task
labels in the same namespace, TCP `MASTER_PORT` only; and the trainer's read-only metrics port
(`TRAINER_METRICS_PORT`, rank 0's /metrics) from anywhere, since the scraper (Prometheus, a
PodMonitor) lives in another namespace that this operator cannot name. Everything else is
denied, including other jobs' pods on the rendezvous port, verify/promote pods and other
namespaces. Egress is not restricted (pods read datasets and base models from object stores
and hubs). Enforced only where the cluster's network plugin implements NetworkPolicy (Calico,
Cilium, ...); on others it is inert.
"""

from __future__ import annotations

from typing import Any

from vlm_operator.builders.job import MASTER_PORT, TRAINER_METRICS_PORT
from vlm_operator.builders.labels import JOB_LABEL, TASK_LABEL, child_meta, job_labels


def network_policy(tj: dict[str, Any]) -> dict[str, Any]:
    name = tj["metadata"]["name"]
    labels = job_labels(name)
    own_pods = {"matchLabels": {JOB_LABEL: labels[JOB_LABEL], TASK_LABEL: labels[TASK_LABEL]}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_meta(tj, f"{name}-trainer", labels),
        "spec": {
            "podSelector": own_pods,
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": own_pods}],
                    "ports": [{"protocol": "TCP", "port": MASTER_PORT}],
                },
                {"ports": [{"protocol": "TCP", "port": TRAINER_METRICS_PORT}]},
            ],
        },
    }
