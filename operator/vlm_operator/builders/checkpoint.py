"""Short Jobs that work on a Checkpoint's files, so the operator itself never mounts storage.

- verify: `vlm-trainer verify-checkpoint DIR` checks the manifest's sha256 of every file and
  writes `{"sizeBytes": N, "files": M}` as its termination message;
- promote: `vlm-trainer promote --checkpoint DIR --output DIR [--base-model REF]` writes an
  HF-format model (a LoRA adapter merged into its base) and its processor to
  `<model storage>/<namespace>/<outputModel>`; an existing model there only with
  `promote.overwrite` (`--overwrite`), else exit code 73 (ModelExists).

Both are owned by the Checkpoint, run as non-root with the trainer image, and mount only the
claims their URIs name.
"""

from __future__ import annotations

import hashlib
from typing import Any

from vlm_trainer.exit_codes import EXIT_MODEL_EXISTS  # promote: the output model exists

from vlm_operator.builders.job import NON_ROOT_UID, cache_env
from vlm_operator.builders.labels import CHECKPOINT_LABEL, child_meta, job_labels
from vlm_operator.builders.storage import StorageMounts, join_uri

CONTAINER = "worker"


def task_job_name(checkpoint: str, task: str) -> str:
    """`<checkpoint>-<task>`, shortened with a hash when over the 63 characters a Job allows."""
    name = f"{checkpoint}-{task}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(checkpoint.encode()).hexdigest()[:8]
    return f"{checkpoint[: 63 - len(task) - 10]}-{digest}-{task}"


def model_uri(model_storage: str, namespace: str, output_model: str) -> str:
    return join_uri(model_storage, namespace, output_model)


def _task_job(
    ck: dict[str, Any], task: str, argv: list[str], mounts: StorageMounts, image: str
) -> dict[str, Any]:
    name = ck["metadata"]["name"]
    labels = job_labels(ck["spec"]["trainerJob"], task) | {CHECKPOINT_LABEL: name[:63]}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": child_meta(ck, task_job_name(name, task), labels),
        "spec": {
            "backoffLimit": 1,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CONTAINER,
                            "operator": "In",
                            "values": [EXIT_MODEL_EXISTS],
                        },
                    }
                ]
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": NON_ROOT_UID,
                        "fsGroup": NON_ROOT_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": CONTAINER,
                            "image": image,
                            "command": argv,
                            "env": cache_env(),
                            "volumeMounts": [
                                {"name": "tmp", "mountPath": "/tmp"},
                                *mounts.mounts(),
                            ],
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                                "readOnlyRootFilesystem": True,
                            },
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}, *mounts.volumes()],
                },
            },
        },
    }


def verify_job(ck: dict[str, Any], image: str) -> dict[str, Any]:
    mounts = StorageMounts()
    path = mounts.path(ck["spec"]["uri"])
    return _task_job(ck, "verify", ["vlm-trainer", "verify-checkpoint", path], mounts, image)


def promote_job(
    ck: dict[str, Any], output_model: str, model_storage: str, image: str, overwrite: bool = False
) -> dict[str, Any]:
    mounts = StorageMounts()
    src = mounts.path(ck["spec"]["uri"])
    dst = mounts.path(
        model_uri(model_storage, ck["metadata"]["namespace"], output_model), writable=True
    )
    argv = ["vlm-trainer", "promote", "--checkpoint", src, "--output", dst]
    if overwrite:
        argv.append("--overwrite")
    if ck["spec"].get("type") == "lora":
        argv += ["--base-model", mounts.path(ck["spec"]["baseModel"])]
    return _task_job(ck, "promote", argv, mounts, image)
