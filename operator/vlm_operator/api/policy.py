"""``TrainingShape.spec.podPolicy``: what a job author may put into the trainer pods.

The shape is an admin object, the TrainerJob a user object: every field of
``TrainerJob.spec.podOverrides`` that could widen what a pod may do is bounded here. Defaults
are closed: volumes of the types PVC, ConfigMap, emptyDir and Secret (Secrets only by a name in
``allowedSecrets``, which also bounds ``env[].valueFrom.secretKeyRef``); no own ServiceAccount;
no tolerations, node labels or priority classes beyond the shape's own. ``hostPath`` (or any
other volume type) only when ``volumeTypes`` lists it.

``policy_violations`` is pure: the operator calls it at admission and refuses the job with
``InvalidSpec`` and one message per violation, each starting with the job's field path (for
example ``spec.podOverrides.volumes[0].hostPath``), before any child exists. What no shape can
allow (reserved environment names, key-less tolerations, ``system-*`` priority classes) is
refused earlier, by the CRD's CEL rules (``api/pod.py``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from vlm_operator.api.base import ApiModel
from vlm_operator.api.common import DNS_SUBDOMAIN, Tolerations
from vlm_operator.api.pod import EnvVar, PodOverrides

DEFAULT_VOLUME_TYPES = ("persistentVolumeClaim", "configMap", "emptyDir", "secret")
_Name = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
_VolumeType = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-zA-Z]+$")]


class PodPolicy(ApiModel):
    """Bounds on a job's podOverrides, and environment the admin adds to every trainer pod."""

    volume_types: Annotated[
        list[_VolumeType], Field(max_length=32, json_schema_extra={"x-kubernetes-list-type": "set"})
    ] = Field(
        default_factory=lambda: list(DEFAULT_VOLUME_TYPES),
        description="core/v1 volume source types a job's podOverrides.volumes may use "
        "(persistentVolumeClaim, configMap, emptyDir, secret by default); hostPath, csi, "
        "projected... only when listed here.",
        json_schema_extra={"default": list(DEFAULT_VOLUME_TYPES)},
    )
    allowed_secrets: Annotated[
        list[_Name], Field(max_length=64, json_schema_extra={"x-kubernetes-list-type": "set"})
    ] = Field(
        default_factory=list,
        description="Secrets (in the job's namespace) a job may mount as a secret volume or "
        "read through env valueFrom.secretKeyRef; none by default.",
    )
    allow_service_account: bool = Field(
        False,
        description="Whether a job may run its trainer under another ServiceAccount of its "
        "namespace (podOverrides.serviceAccountName); by default it runs under the one the "
        "operator creates for it.",
    )
    tolerations: Tolerations = Field(
        default_factory=list,
        description="Tolerations a job may add (each of its podOverrides.tolerations must equal "
        "one of these); none by default.",
    )
    node_selector: Annotated[
        dict[str, Annotated[list[Annotated[str, Field(max_length=63)]], Field(max_length=64)]],
        Field(max_length=32),
    ] = Field(
        default_factory=dict,
        description="Node labels a job may select: label key -> allowed values; none by default.",
    )
    priority_classes: Annotated[
        list[_Name], Field(max_length=32, json_schema_extra={"x-kubernetes-list-type": "set"})
    ] = Field(
        default_factory=list,
        description="PriorityClasses a job may choose (podOverrides.priorityClassName); none by "
        "default.",
    )
    env: Annotated[
        list[EnvVar],
        Field(
            max_length=64,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
        ),
    ] = Field(
        default_factory=list,
        description="Environment the admin adds to every trainer pod of this shape, before the "
        "job's; may use reserved names (for example VLM_DIST_TIMEOUT_S), but never replaces a "
        "variable the operator sets.",
    )


def _secret_names(volume: dict[str, Any]) -> list[tuple[str, str]]:
    """(field path below the volume, Secret name) of every Secret a volume reads."""
    out = []
    if "secret" in volume:
        out.append(("secret.secretName", (volume["secret"] or {}).get("secretName", "")))
    for j, src in enumerate((volume.get("projected") or {}).get("sources") or []):
        if "secret" in src:
            out.append((f"projected.sources[{j}].secret.name", (src["secret"] or {}).get("name")))
    return out


def _volume_violations(o: PodOverrides, p: PodPolicy, shape: str) -> list[str]:
    problems = []
    for i, vol in enumerate(o.volumes or ()):
        at = f"spec.podOverrides.volumes[{i}]"
        source = dict(vol.model_extra or {})
        for kind in source:
            if kind not in p.volume_types:
                problems.append(
                    f"{at}.{kind}: volume type {kind} is not allowed by TrainingShape {shape} "
                    f"(podPolicy.volumeTypes: {', '.join(p.volume_types)})"
                )
        for path, secret in _secret_names(source):
            if secret not in p.allowed_secrets:
                problems.append(
                    f"{at}.{path}: Secret {secret!r} is not in TrainingShape {shape}'s "
                    "podPolicy.allowedSecrets"
                )
    for i, env in enumerate(o.env or ()):
        ref = env.value_from.secret_key_ref if env.value_from else None
        if ref is not None and ref.name not in p.allowed_secrets:
            problems.append(
                f"spec.podOverrides.env[{i}].valueFrom.secretKeyRef.name: Secret {ref.name!r} "
                f"is not in TrainingShape {shape}'s podPolicy.allowedSecrets"
            )
    return problems


def _placement_violations(o: PodOverrides, p: PodPolicy, shape: str) -> list[str]:
    problems = []
    if o.service_account_name and not p.allow_service_account:
        problems.append(
            f"spec.podOverrides.serviceAccountName: TrainingShape {shape} does not allow a job "
            "to choose its ServiceAccount (podPolicy.allowServiceAccount)"
        )
    allowed = [t.to_api() for t in p.tolerations]
    for i, tol in enumerate(o.tolerations or ()):
        if tol.to_api() not in allowed:
            problems.append(
                f"spec.podOverrides.tolerations[{i}]: not one of TrainingShape {shape}'s "
                "podPolicy.tolerations"
            )
    for key, value in (o.node_selector or {}).items():
        if value not in p.node_selector.get(key, ()):
            problems.append(
                f"spec.podOverrides.nodeSelector.{key}: {key}={value} is not allowed by "
                f"TrainingShape {shape}'s podPolicy.nodeSelector"
            )
    pc = o.priority_class_name
    if pc and pc not in p.priority_classes:
        problems.append(
            f"spec.podOverrides.priorityClassName: {pc} is not one of TrainingShape {shape}'s "
            "podPolicy.priorityClasses"
        )
    return problems


def policy_violations(o: PodOverrides | None, p: PodPolicy | None, shape: str) -> list[str]:
    """One message per podOverrides field the shape's policy does not allow; empty if none."""
    if o is None:
        return []
    p = p or PodPolicy()
    return _volume_violations(o, p, shape) + _placement_violations(o, p, shape)
