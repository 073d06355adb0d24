"""The trainer's identity: a ServiceAccount per TrainerJob and a Role that lets it patch only
its own TrainerJob's status and create Checkpoints in its namespace (least privilege).

When `podOverrides.serviceAccountName` names an existing account, no account is created and
the Role is bound to that account instead.
"""

from __future__ import annotations

from typing import Any

from vlm_operator.api import GROUP
from vlm_operator.builders.labels import child_meta, job_labels, trainer_names


def service_account_name(tj: dict[str, Any]) -> str:
    overrides = tj["spec"].get("podOverrides") or {}
    return overrides.get("serviceAccountName") or trainer_names(tj["metadata"]["name"])["account"]


def trainer_rbac(tj: dict[str, Any]) -> list[dict[str, Any]]:
    name = tj["metadata"]["name"]
    account = trainer_names(name)["account"]
    labels = job_labels(name)
    sa_name = service_account_name(tj)
    objs: list[dict[str, Any]] = []
    if sa_name == account:
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": child_meta(tj, account, labels),
            }
        )
    objs.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": child_meta(tj, account, labels),
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": ["trainerjobs"],
                    "resourceNames": [name],
                    "verbs": ["get"],
                },
                {
                    "apiGroups": [GROUP],
                    "resources": ["trainerjobs/status"],
                    "resourceNames": [name],
                    "verbs": ["get", "patch"],
                },
                # `create` cannot be limited by name; the trainer names checkpoints <job>-<step>.
                {
                    "apiGroups": [GROUP],
                    "resources": ["checkpoints"],
                    "verbs": ["create", "get", "patch"],
                },
            ],
        }
    )
    objs.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": child_meta(tj, account, labels),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": sa_name,
                    "namespace": tj["metadata"]["namespace"],
                }
            ],
        }
    )
    return objs
