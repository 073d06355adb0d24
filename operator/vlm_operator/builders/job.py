"""The trainer workload of a TrainerJob: ConfigMap (trainer config), batch/v1 Job and, for
several nodes, a headless Service.

Supported: one pod per node; one node is a plain Job running `vlm-trainer <mode>`; several GPUs
or several nodes run `torchrun` with `NNODES`, `NODE_RANK` (the Job completion index),
`NPROC_PER_NODE`, `MASTER_ADDR` (`<job>-0.<job>`, the index-0 pod behind the headless Service)
and `MASTER_PORT`. Pods are hardened (non-root, no privilege escalation, all capabilities
dropped, seccomp RuntimeDefault). The Job's podFailurePolicy sorts pod ends into failures and
disruptions: exit codes 65 (bad data), 78 (bad config) and 74 (checkpoint storage full) fail the
Job at once, since retrying cannot fix them; a pod with the `DisruptionTarget` condition
(evicted, preempted, its node drained) or one that exited 75 (the trainer's graceful stop: it got
SIGTERM and wrote a snapshot at its current step) is ignored, so it is replaced without using up
`backoffLimit`. Pods get the shape's `terminationGracePeriodSeconds` to write that snapshot.
Kueue: `queueName` sets the queue label (and `workloadPriorityClass` the priority label) and the
Job starts suspended, so Kueue decides when it runs; Kueue preempts by suspending it again.
Several processes run under `vlm-trainer launch` (PID 1): it forwards SIGTERM to the workers and
exits 75 after their graceful stop (vlm_trainer/launch.py).
"""

from __future__ import annotations

from typing import Any

import yaml
from vlm_trainer.exit_codes import EXIT_CONFIG as EXIT_CONFIG_INVALID  # one definition, shared
from vlm_trainer.exit_codes import EXIT_DATA_REFUSED as EXIT_DATA_INVALID
from vlm_trainer.exit_codes import EXIT_PREEMPTED, EXIT_STORAGE_FULL

from vlm_operator.api import TrainerJob, TrainingShape
from vlm_operator.builders.config import (
    CONFIG_DIR,
    CONFIG_KEY,
    InitWeights,
    checkpoint_location,
    trainer_config,
)
from vlm_operator.builders.labels import (
    KUEUE_PRIORITY_LABEL,
    KUEUE_QUEUE_LABEL,
    child_meta,
    job_labels,
    trainer_names,
    without_status,
)
from vlm_operator.builders.rbac import service_account_name
from vlm_operator.builders.storage import StorageMounts, join_uri

CONTAINER = "trainer"
MASTER_PORT = 29500
#: The trainer's Prometheus endpoint (rank 0 of each pod serves it; the chart's PodMonitor
#: scrapes the container port named "metrics").
TRAINER_METRICS_PORT = 9400
NON_ROOT_UID = 65532
#: The root filesystem of every trainer, verify and promote pod is read-only: HOME and every
#: cache a library may write (the Hugging Face hub's downloads of a hub-id base model
#: included) live on the pod's `/tmp` emptyDir.
CACHE_ENV: dict[str, str] = {
    "HOME": "/tmp",
    "HF_HOME": "/tmp/huggingface",
    "XDG_CACHE_HOME": "/tmp/.cache",
    "TRITON_CACHE_DIR": "/tmp/.cache/triton",
    "TORCHINDUCTOR_CACHE_DIR": "/tmp/.cache/torchinductor",
    "MPLCONFIGDIR": "/tmp/.cache/matplotlib",
}


def cache_env() -> list[dict[str, Any]]:
    return [{"name": k, "value": v} for k, v in CACHE_ENV.items()]


INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def trainer_command(mode: str, nodes: int, procs: int) -> list[str]:
    entry = ["--config", f"{CONFIG_DIR}/{CONFIG_KEY}"]
    if nodes == 1 and procs == 1:
        return ["vlm-trainer", mode, *entry]
    return [
        "vlm-trainer",  # PID 1 forwards SIGTERM to the workers (vlm_trainer/launch.py)
        "launch",
        "torchrun",
        "--nnodes=$(NNODES)",
        "--nproc-per-node=$(NPROC_PER_NODE)",
        "--node-rank=$(NODE_RANK)",
        "--master-addr=$(MASTER_ADDR)",
        "--master-port=$(MASTER_PORT)",
        "-m",
        "vlm_trainer.cli",
        mode,
        *entry,
    ]


def trainer_env(
    tj_body: dict[str, Any],
    tj: TrainerJob,
    shape: TrainingShape,
    ckpt_uri: str,
    init: InitWeights | None = None,
) -> list[dict[str, Any]]:
    name, sh = tj.metadata.name, shape.spec
    env = [
        {"name": "VLM_TRAINERJOB_NAME", "value": name},
        _field_env("VLM_TRAINERJOB_NAMESPACE", "metadata.namespace"),
        {"name": "VLM_TRAINERJOB_UID", "value": tj_body["metadata"]["uid"]},
        {"name": "VLM_CHECKPOINT_URI", "value": join_uri(ckpt_uri, "checkpoints")},
        # The base a LoRA checkpoint of this job is an adapter for (what promotion merges
        # into); the lineage (root model, processor) goes onto every Checkpoint it creates.
        {"name": "VLM_BASE_MODEL", "value": init.base_model if init else sh.base_model},
        {"name": "VLM_ROOT_MODEL", "value": sh.base_model},
        {"name": "VLM_PROCESSOR", "value": sh.processor or sh.base_model},
        {"name": "VLM_TRAINER_METRICS_PORT", "value": str(TRAINER_METRICS_PORT)},
        *cache_env(),
    ]
    procs = max(1, sh.gpus_per_node)
    if sh.nodes > 1 or procs > 1:
        env += [
            {"name": "NNODES", "value": str(sh.nodes)},
            {"name": "NPROC_PER_NODE", "value": str(procs)},
            _field_env("NODE_RANK", f"metadata.annotations['{INDEX_ANNOTATION}']")
            if sh.nodes > 1
            else {"name": "NODE_RANK", "value": "0"},
            {"name": "MASTER_ADDR", "value": f"{name}-0.{name}" if sh.nodes > 1 else "127.0.0.1"},
            {"name": "MASTER_PORT", "value": str(MASTER_PORT)},
        ]
    # The shape's environment (the admin's) first; it never replaces the operator's own.
    own = {e["name"] for e in env}
    policy = sh.pod_policy
    env = [e.to_api() for e in (policy.env if policy else []) if e.name not in own] + env
    overrides = tj.spec.pod_overrides
    if overrides and overrides.env:  # reserved names are refused at admission
        env += [e.to_api() for e in overrides.env]
    return env


def _resources(shape: TrainingShape) -> dict[str, Any]:
    sh = shape.spec
    res = sh.resources.to_api() if sh.resources else {}
    if sh.gpus_per_node > 0:
        gpus = str(sh.gpus_per_node)
        res.setdefault("limits", {})[sh.gpu_resource] = gpus
        res.setdefault("requests", {})[sh.gpu_resource] = gpus
    return res


def _tolerations(tj: TrainerJob, shape: TrainingShape) -> list[dict[str, Any]]:
    tols = [t.to_api() for t in shape.spec.tolerations or []]
    overrides = tj.spec.pod_overrides
    return tols + [t.to_api() for t in (overrides.tolerations if overrides else None) or []]


def pod_failure_policy() -> dict[str, Any]:
    """Rules are matched in order: a pod that ran out of storage while being preempted still
    fails the Job (the retry would hit the same wall)."""

    def codes(action: str, values: list[int]) -> dict[str, Any]:
        # The apiserver wants the codes sorted.
        exit_codes = {"containerName": CONTAINER, "operator": "In", "values": sorted(values)}
        return {"action": action, "onExitCodes": exit_codes}

    return {
        "rules": [
            codes("FailJob", [EXIT_DATA_INVALID, EXIT_CONFIG_INVALID, EXIT_STORAGE_FULL]),
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
            codes("Ignore", [EXIT_PREEMPTED]),
        ]
    }


def trainer_workload(
    tj_body: dict[str, Any],
    shape_body: dict[str, Any],
    default_storage: str,
    default_image: str,
    init: InitWeights | None = None,
) -> list[dict[str, Any]]:
    """ConfigMap, (Service,) Job for one TrainerJob, in the order they should be applied."""
    tj = TrainerJob.model_validate(without_status(tj_body))
    shape = TrainingShape.model_validate(without_status(shape_body))
    name, sh, spec = tj.metadata.name, shape.spec, tj.spec
    names, labels = trainer_names(name), job_labels(name)
    mounts = StorageMounts()
    cfg = trainer_config(tj, shape, default_storage, mounts, init)
    ckpt_uri = checkpoint_location(tj, default_storage)
    overrides = spec.pod_overrides

    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_meta(tj_body, names["config"], labels),
        "data": {CONFIG_KEY: yaml.safe_dump(cfg, sort_keys=False)},
    }
    volumes = [
        {"name": "config", "configMap": {"name": names["config"]}},
        {"name": "tmp", "emptyDir": {}},
        {
            "name": "dshm",
            "emptyDir": {
                "medium": "Memory",
                **({"sizeLimit": str(sh.shm_size)} if sh.shm_size else {}),
            },
        },
        *mounts.volumes(),
    ]
    volume_mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
        *mounts.mounts(),
    ]
    if overrides:
        volumes += [v.to_api() for v in overrides.volumes or []]
        volume_mounts += [m.to_api() for m in overrides.volume_mounts or []]
    container = {
        "name": CONTAINER,
        "image": sh.image or default_image,
        "command": trainer_command(str(spec.mode), sh.nodes, max(1, sh.gpus_per_node)),
        "env": trainer_env(tj_body, tj, shape, ckpt_uri, init),
        "resources": _resources(shape),
        "ports": [{"name": "metrics", "containerPort": TRAINER_METRICS_PORT}],
        "volumeMounts": volume_mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
    }
    if sh.image_pull_policy:
        container["imagePullPolicy"] = str(sh.image_pull_policy)
    node_selector = dict(sh.node_selector or {}) | dict(
        (overrides.node_selector if overrides else None) or {}
    )
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": sh.termination_grace_period_seconds,
        "serviceAccountName": service_account_name(tj_body),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NON_ROOT_UID,
            "runAsGroup": NON_ROOT_UID,
            "fsGroup": NON_ROOT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tols := _tolerations(tj, shape):
        pod_spec["tolerations"] = tols
    if overrides and overrides.priority_class_name:
        pod_spec["priorityClassName"] = overrides.priority_class_name
    job_meta = child_meta(tj_body, names["job"], dict(labels))
    if spec.queue_name:
        job_meta["labels"][KUEUE_QUEUE_LABEL] = spec.queue_name
    if spec.workload_priority_class:
        job_meta["labels"][KUEUE_PRIORITY_LABEL] = spec.workload_priority_class
    job_spec: dict[str, Any] = {
        # Kueue admits a queued job by unsuspending it; until then it must not start.
        "suspend": bool(spec.suspend or spec.queue_name),
        "backoffLimit": spec.backoff_limit,
        "podFailurePolicy": pod_failure_policy(),
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    objs = [config_map]
    if sh.nodes > 1:
        pod_spec["subdomain"] = names["service"]
        job_spec |= {"completionMode": "Indexed", "completions": sh.nodes, "parallelism": sh.nodes}
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": child_meta(tj_body, names["service"], labels),
                "spec": {
                    "clusterIP": "None",
                    "publishNotReadyAddresses": True,
                    "selector": {k: labels[k] for k in labels if k.startswith("vlmtrain.dev/")},
                    "ports": [{"name": "rendezvous", "port": MASTER_PORT}],
                },
            }
        )
    objs.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": job_meta, "spec": job_spec})
    return objs
