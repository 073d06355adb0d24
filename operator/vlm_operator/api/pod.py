"""``TrainerJob.spec.podOverrides``: what a job may add to its trainer pods.

Supported: env (typed, with the four usual ``valueFrom`` sources), volumes and volume mounts,
service account, node selector, tolerations and priority class. The operator merges these into
the pod template after the shape's settings, so a job can add placement but the shape's GPU
request stays.

Volumes are the one free-form field of the API: a core/v1 Volume has some thirty source types
(``persistentVolumeClaim``, ``secret``, ``csi``...), so only ``name`` is typed here and the rest
is kept as written (``x-kubernetes-preserve-unknown-fields``); the apiserver validates it in full
when the operator creates the Job, and the operator reports a bad one as ``InvalidSpec``.

What a job may choose is bounded by its TrainingShape's ``podPolicy`` (``api/policy.py``, checked
by the operator at admission). What no shape can allow is refused here, by CEL at ``kubectl
apply`` and by the same rules in Python: reserved environment names (the operator's ``VLM_*``,
``HOME``, ``PATH``, the loader's ``LD_*``, Python's, torchrun's rendezvous and rank variables,
``HF_*``, ``TORCH*``, ``NCCL_*``, ``CUDA_*``, ``AWS_*``, ``KUBERNETES_*``), a toleration without
a key (it tolerates every taint) and the ``system-*`` priority classes.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import ConfigDict, Field, field_validator, model_validator

from vlm_operator.api.base import ApiModel, Cel, Rule, cel, cel_string
from vlm_operator.api.common import DNS_LABEL, DNS_SUBDOMAIN, NodeSelector, Tolerations

ENV_NAME_RE = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
_Name = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
_Key = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]

#: Environment a job can never set: the operator's own variables and everything that changes
#: how the interpreter, the loader, torchrun, NCCL, the hub client or the cluster client behave.
#: One definition for the CEL rule and the Python check.
RESERVED_ENV_PREFIXES = (
    "VLM_", "HF_", "PYTHON", "LD_", "MASTER_", "TORCH", "NCCL_", "CUDA_", "AWS_", "PET_",
    "KUBERNETES_", "TRANSFORMERS_",
)  # fmt: skip
RESERVED_ENV_NAMES = (
    "HOME", "PATH", "RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
    "NNODES", "NODE_RANK", "NPROC_PER_NODE",
)  # fmt: skip
RESERVED_ENV_RE = (
    "^((" + "|".join(RESERVED_ENV_PREFIXES) + ").*|" + "|".join(RESERVED_ENV_NAMES) + ")$"
)
_RESERVED_ENV_MSG = (
    "this environment name is reserved (VLM_*, HOME, PATH, HF_*, PYTHON*, LD_*, MASTER_*, "
    "RANK, WORLD_SIZE, TORCH*, NCCL_*, CUDA_*, AWS_*, ...): the operator or the runtime sets it"
)
_RESERVED_ENV = Rule(
    f"!self.name.matches({cel_string(RESERVED_ENV_RE)})",
    _RESERVED_ENV_MSG,
    field_path=".name",
    reason="FieldValueForbidden",
)
_KEYED_TOLERATIONS = Rule(
    "self.all(t, has(t.key) && t.key != '')",
    "a job's tolerations must name a key: a key-less Exists toleration tolerates every taint",
    reason="FieldValueForbidden",
)
_NO_SYSTEM_PRIORITY = Rule(
    "!self.startsWith('system-')",
    "the system-* priority classes are for cluster components, not trainer pods",
    reason="FieldValueForbidden",
)


def reserved_env(name: str) -> bool:
    """Whether a job may not set this environment variable (the CEL rule, in Python)."""
    return re.match(RESERVED_ENV_RE, name) is not None


class KeySelector(ApiModel):
    """A key of a Secret or ConfigMap in the job's namespace."""

    name: _Name = Field(..., description="Name of the Secret or ConfigMap.")
    key: _Key = Field(..., description="Key to read.")
    optional: bool | None = Field(
        None, description="Start the pod even when the object or key is missing."
    )


class FieldSelector(ApiModel):
    """A field of the pod itself (downward API), for example metadata.name."""

    field_path: Annotated[str, Field(min_length=1, max_length=256)] = Field(
        ..., description="Path of the field, for example metadata.namespace or status.podIP."
    )
    api_version: str | None = Field(None, max_length=64, description="Defaults to v1.")


class ResourceFieldSelector(ApiModel):
    """A resource limit or request of the trainer container, for example limits.memory."""

    resource: Annotated[str, Field(min_length=1, max_length=256)] = Field(
        ..., description="For example limits.cpu or requests.memory."
    )
    container_name: str | None = Field(None, max_length=63, description="Defaults to trainer.")
    divisor: str | None = Field(None, max_length=64, description="Unit, for example 1Mi.")


class EnvVarSource(ApiModel):
    """Where an environment variable's value comes from; exactly one source."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            Rule(
                "[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef), "
                "has(self.resourceFieldRef)].filter(x, x).size() == 1",
                "valueFrom must set exactly one of secretKeyRef, configMapKeyRef, fieldRef, "
                "resourceFieldRef",
            )
        )
    )

    secret_key_ref: KeySelector | None = Field(None, description="A key of a Secret.")
    config_map_key_ref: KeySelector | None = Field(None, description="A key of a ConfigMap.")
    field_ref: FieldSelector | None = Field(None, description="A field of the pod.")
    resource_field_ref: ResourceFieldSelector | None = Field(
        None, description="A resource of the container."
    )

    @model_validator(mode="after")
    def _one_source(self) -> EnvVarSource:
        sources = [
            self.secret_key_ref,
            self.config_map_key_ref,
            self.field_ref,
            self.resource_field_ref,
        ]
        if sum(s is not None for s in sources) != 1:
            raise ValueError(
                "valueFrom must set exactly one of secretKeyRef, configMapKeyRef, fieldRef, "
                "resourceFieldRef"
            )
        return self


_VALUE_OR_VALUE_FROM = Rule(
    "!(has(self.value) && has(self.valueFrom))",
    "set value or valueFrom, not both",
    field_path=".valueFrom",
)


class EnvVar(ApiModel):
    """An environment variable of the trainer container (core/v1 EnvVar)."""

    model_config = ConfigDict(json_schema_extra=cel(_VALUE_OR_VALUE_FROM))

    name: Annotated[str, Field(min_length=1, max_length=256, pattern=ENV_NAME_RE)] = Field(
        ..., description="Variable name."
    )
    value: str | None = Field(None, max_length=32768, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        None, description="Take the value from a Secret, ConfigMap or the pod."
    )

    @model_validator(mode="after")
    def _not_both(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError("set value or valueFrom, not both")
        return self


class JobEnvVar(EnvVar):
    """An environment variable a job adds: any name except the reserved ones."""

    model_config = ConfigDict(json_schema_extra=cel(_VALUE_OR_VALUE_FROM, _RESERVED_ENV))

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if reserved_env(name):
            raise ValueError(f"{name}: {_RESERVED_ENV_MSG}")
        return name


class Volume(ApiModel):
    """A core/v1 Volume, passed to the pod as written: name plus one volume source such as
    persistentVolumeClaim, secret, configMap, emptyDir or csi."""

    # Free-form on purpose (see the module docstring): crdgen turns extra="allow" into
    # x-kubernetes-preserve-unknown-fields.
    model_config = ConfigDict(extra="allow")

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)] = Field(
        ..., description="Volume name, referenced by volumeMounts."
    )


class VolumeMount(ApiModel):
    """Where a volume appears in the trainer container."""

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)] = Field(
        ..., description="Name of a volume in volumes."
    )
    mount_path: Annotated[str, Field(min_length=2, max_length=1024, pattern=r"^/\S*$")] = Field(
        ..., description="Absolute path in the container."
    )
    sub_path: str | None = Field(None, max_length=1024, description="Sub-path of the volume.")
    read_only: bool = Field(False, description="Mount read-only.")


class PodOverrides(ApiModel):
    """Additions to the trainer pods of one job."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            Rule(
                "!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes) && "
                "self.volumes.exists(v, v.name == m.name))",
                "every volumeMounts[].name must name an entry of volumes",
                field_path=".volumeMounts",
            )
        )
    )

    env: (
        Annotated[
            list[JobEnvVar],
            Field(
                max_length=64,
                json_schema_extra={
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                },
            ),
        ]
        | None
    ) = Field(
        None,
        description="Environment variables added to the trainer container; reserved names "
        "(VLM_*, HOME, PATH, HF_*, PYTHON*, LD_*, MASTER_*, RANK, WORLD_SIZE, TORCH*, NCCL_*, "
        "CUDA_*, AWS_*, ...) are refused, and secretKeyRef only reads the shape's "
        "podPolicy.allowedSecrets.",
    )
    volumes: (
        Annotated[
            list[Volume],
            Field(
                max_length=16,
                json_schema_extra={
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                },
            ),
        ]
        | None
    ) = Field(
        None,
        description="Volumes added to the pod (core/v1 Volume, unchanged), of the types the "
        "shape's podPolicy.volumeTypes allows; Secrets only from podPolicy.allowedSecrets.",
    )
    volume_mounts: (
        Annotated[
            list[VolumeMount],
            Field(
                max_length=16,
                json_schema_extra={
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["mountPath"],
                },
            ),
        ]
        | None
    ) = Field(None, description="Mounts of those volumes in the trainer container.")
    service_account_name: (
        Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)] | None
    ) = Field(
        None,
        description="Run the trainer as this ServiceAccount instead of the one the operator "
        "creates per job (the operator still binds the status-reporting Role to it). Only when "
        "the shape's podPolicy.allowServiceAccount is true.",
    )
    node_selector: NodeSelector | None = Field(
        None,
        description="Node labels added to the shape's nodeSelector; each key and value must "
        "be allowed by the shape's podPolicy.nodeSelector.",
    )
    tolerations: Annotated[Tolerations, Cel(_KEYED_TOLERATIONS)] | None = Field(
        None,
        description="Tolerations added to the shape's tolerations; each must be one the "
        "shape's podPolicy.tolerations lists, and name a key.",
    )
    priority_class_name: (
        Annotated[
            str,
            Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN),
            Cel(_NO_SYSTEM_PRIORITY),
        ]
        | None
    ) = Field(
        None,
        description="PriorityClass of the trainer pods: one of the shape's "
        "podPolicy.priorityClasses, never system-*.",
    )

    @model_validator(mode="after")
    def _check(self) -> PodOverrides:
        for items, key in (
            (self.env, "name"),
            (self.volumes, "name"),
            (self.volume_mounts, "mount_path"),
        ):
            values = [getattr(i, key) for i in items or ()]
            if len(set(values)) != len(values):
                raise ValueError(f"duplicate {key} in a list keyed by it")
        names = {v.name for v in self.volumes or ()}
        for mount in self.volume_mounts or ():
            if mount.name not in names:
                raise ValueError("every volumeMounts[].name must name an entry of volumes")
        if any(not t.key for t in self.tolerations or ()):
            raise ValueError(f"tolerations: {_KEYED_TOLERATIONS.message}")
        if (self.priority_class_name or "").startswith("system-"):
            raise ValueError(f"priorityClassName: {_NO_SYSTEM_PRIORITY.message}")
        return self
