"""Field types shared by the three kinds: names, URIs, quantities, tolerations, resources.

Supported URI schemes (one regex each, used by both pydantic and CEL):

- ``pvc://<claim>/<path>``: a file or folder on a PersistentVolumeClaim in the object's
  namespace; the operator mounts the claim into the trainer pod;
- ``file:///<absolute path>``: a path already visible inside the pod (local runs, hostPath or an
  image that ships the data).

Object stores (``s3://``, ``gs://``) are not supported yet; adding one means one more regex in
``_SCHEMES`` here and a mount/download step in the operator, and nothing else in the API.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field, WithJsonSchema, model_validator

from vlm_operator.api.base import ApiModel, Cel, Rule, cel, cel_string

# --- names ----------------------------------------------------------------------------------

#: RFC 1123 label: what Kubernetes requires of most names and what a model folder name needs.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: RFC 1123 subdomain: the names of cluster-scoped and most namespaced objects.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]

#: The name of a promoted model: also a folder name and a label value, hence a DNS label.
ModelName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]

# --- URIs -------------------------------------------------------------------------------------

_CLAIM = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
_SCHEMES = {
    "pvc": rf"pvc://{_CLAIM}(/\S*)?",
    "file": r"file:///\S*",
}
_FILE_SCHEMES = {
    "pvc": rf"pvc://{_CLAIM}/\S*[^\s/]",
    "file": r"file:///\S*[^\s/]",
}
LOCATION_RE = "^(" + "|".join(_SCHEMES.values()) + ")$"
FILE_URI_RE = "^(" + "|".join(_FILE_SCHEMES.values()) + ")$"
#: A ``..`` path segment would let a pvc:// path escape its claim's mount.
DOT_DOT_RE = r"(^|/)\.\.(/|$)"

_LOCATION_MSG = (
    "must be pvc://<claim>[/<path>] or file:///<absolute path> "
    "(object stores such as s3:// are not supported yet)"
)
_FILE_MSG = (
    "must be pvc://<claim>/<path to a file> or file:///<absolute path to a file> "
    "(object stores such as s3:// are not supported yet)"
)
_DOT_DOT_MSG = "must not contain '..' path segments"


def _uri_checker(regex: str, message: str):
    pattern = re.compile(regex)
    dot_dot = re.compile(DOT_DOT_RE)

    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(message)
        if dot_dot.search(value):
            raise ValueError(_DOT_DOT_MSG)
        return value

    return check


def _uri_type(regex: str, message: str, description: str):
    return Annotated[
        str,
        Field(min_length=1, max_length=1024, description=description),
        Cel(
            Rule(f"self.matches({cel_string(regex)})", message),
            Rule(f"!self.matches({cel_string(DOT_DOT_RE)})", _DOT_DOT_MSG),
        ),
        AfterValidator(_uri_checker(regex, message)),
    ]


#: A file: a dataset, for example ``pvc://datasets/sft/train.jsonl``.
FileURI = _uri_type(FILE_URI_RE, _FILE_MSG, "URI of a file.")
#: A folder or file: checkpoint storage, a checkpoint's own folder.
LocationURI = _uri_type(LOCATION_RE, _LOCATION_MSG, "URI of a folder.")

#: A base model or processor: a Hugging Face hub id (``Qwen/Qwen3-VL-8B-Instruct``) or a folder.
HUB_ID_RE = r"^[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*$"
MODEL_REF_RE = "^(" + HUB_ID_RE[1:-1] + "|" + "|".join(_SCHEMES.values()) + ")$"
_MODEL_MSG = (
    "must be a Hugging Face model id (<org>/<name>), pvc://<claim>/<path> or "
    "file:///<absolute path>"
)
ModelRef = Annotated[
    str,
    Field(min_length=1, max_length=512),
    Cel(
        Rule(f"self.matches({cel_string(MODEL_REF_RE)})", _MODEL_MSG),
        Rule(f"!self.matches({cel_string(DOT_DOT_RE)})", _DOT_DOT_MSG),
    ),
    AfterValidator(_uri_checker(MODEL_REF_RE, _MODEL_MSG)),
]

# --- quantities and resources -------------------------------------------------------------

#: Kubernetes resource.Quantity, as the apiserver's own OpenAPI spells it.
QUANTITY_RE = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY = re.compile(QUANTITY_RE)


def _check_quantity(value: int | str) -> int | str:
    if isinstance(value, str) and not _QUANTITY.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (for example 500m, 16Gi, 2)")
    return value


Quantity = Annotated[
    int | str,
    AfterValidator(_check_quantity),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": QUANTITY_RE}),
]

#: A resource name such as ``cpu``, ``memory`` or ``nvidia.com/gpu``.
RESOURCE_NAME_RE = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$"
ResourceName = Annotated[str, Field(min_length=1, max_length=253, pattern=RESOURCE_NAME_RE)]

ResourceList = Annotated[
    dict[ResourceName, Quantity],
    Field(json_schema_extra={"maxProperties": 16}),
]


class ResourceRequirements(ApiModel):
    """CPU, memory and other resources of the trainer container (core/v1 ResourceRequirements
    without claims). GPUs are not set here: they come from the shape's gpusPerNode."""

    requests: ResourceList | None = Field(
        None, description="Minimum resources the scheduler reserves, for example cpu: '8'."
    )
    limits: ResourceList | None = Field(
        None, description="Maximum resources the container may use, for example memory: 200Gi."
    )


# --- placement ------------------------------------------------------------------------------


class TolerationOperator(StrEnum):
    """How a toleration matches a taint's value."""

    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    """Which taint effect a toleration tolerates; empty tolerates all."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(ApiModel):
    """A core/v1 Toleration: lets trainer pods run on nodes with a matching taint."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            Rule(
                "!has(self.value) || self.value == '' || self.operator != 'Exists'",
                "value must be empty when operator is Exists",
                field_path=".value",
            ),
            Rule(
                "(has(self.key) && self.key != '') || self.operator == 'Exists'",
                "key may only be empty with operator Exists (which then tolerates every taint)",
                field_path=".key",
            ),
        )
    )

    key: str | None = Field(
        None,
        max_length=316,
        description="Taint key to match; empty with operator Exists matches every taint.",
    )
    operator: TolerationOperator = Field(
        TolerationOperator.EQUAL, description="Exists or Equal (default)."
    )
    value: str | None = Field(
        None, max_length=63, description="Taint value to match when operator is Equal."
    )
    effect: TaintEffect | None = Field(
        None, description="NoSchedule, PreferNoSchedule or NoExecute; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        None,
        ge=0,
        description="With NoExecute: how long the pod stays on the node after the taint appears.",
    )

    @model_validator(mode="after")
    def _key_and_value(self) -> Toleration:
        if self.operator == TolerationOperator.EXISTS and self.value:
            raise ValueError("value must be empty when operator is Exists")
        if not self.key and self.operator != TolerationOperator.EXISTS:
            raise ValueError(
                "key may only be empty with operator Exists (which then tolerates every taint)"
            )
        return self


NodeSelector = Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=32)]
Tolerations = Annotated[list[Toleration], Field(max_length=32)]

# --- enums shared by more than one kind -----------------------------------------------------


class Mode(StrEnum):
    """Training method: supervised fine-tuning, direct preference optimisation or RL."""

    SFT = "sft"
    DPO = "dpo"
    RL = "rl"


class CheckpointType(StrEnum):
    """What a checkpoint holds: the full weights or a LoRA adapter for the base model."""

    FULL = "full"
    LORA = "lora"
