"""Labels and names every object the operator creates shares.

Children of a TrainerJob are named after it (`<job>`, `<job>-trainer`, `<job>-config`), which
makes creation idempotent: a second reconcile finds the object by name instead of making another.
"""

from __future__ import annotations

from typing import Any

from vlm_operator.api import API_VERSION

MANAGED_BY = "vlm-trainer-operator"
JOB_LABEL = "vlmtrain.dev/trainer-job"
CHECKPOINT_LABEL = "vlmtrain.dev/checkpoint"
TASK_LABEL = "vlmtrain.dev/task"  # train | verify | promote
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
#: Set by the trainer on a Checkpoint before keepLast deletes its files (trainer: kube_report).
PRUNED_ANNOTATION = "vlmtrain.dev/pruned"
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"  # a WorkloadPriorityClass name


def job_labels(job_name: str, task: str = "train") -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "vlm-trainer",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        JOB_LABEL: job_name,
        TASK_LABEL: task,
    }


def owner_ref(obj: dict[str, Any], controller: bool = True) -> dict[str, Any]:
    """An ownerReference to one of our custom objects (garbage collection on deletion)."""
    return {
        "apiVersion": obj.get("apiVersion", API_VERSION),
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def child_meta(owner: dict[str, Any], name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner["metadata"]["namespace"],
        "labels": labels,
        "ownerReferences": [owner_ref(owner)],
    }


def trainer_names(job_name: str) -> dict[str, str]:
    """Names of a TrainerJob's children. Kubernetes caps Job names at 63 characters (the pod
    label) so the API caps TrainerJob names accordingly."""
    return {
        "job": job_name,
        "service": job_name,  # headless Service: pods are <job>-<index>.<job>
        "config": f"{job_name}-config",
        "account": f"{job_name}-trainer",
    }


def without_status(body: dict[str, Any]) -> dict[str, Any]:
    """The object minus its status: specs are validated by the models, while status is ours
    (or the trainer's) and must never make a spec look invalid."""
    return {k: v for k, v in body.items() if k != "status"}
