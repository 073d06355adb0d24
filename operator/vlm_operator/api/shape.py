"""TrainingShape (cluster-scoped): a hardware and model profile that admins publish.

A shape says what a TrainerJob runs on: base model and processor, context length, GPUs per node
and nodes, the trainer image, CPU/memory, node placement, numeric precision, and the limits jobs
must respect (LoRA rank, full fine-tuning, allowed modes, and ``podPolicy``: what a job may put
into its pods). The spec may change; the operator
hashes it into ``status.version`` and every job pins the version it started with.

What CEL checks here: ranges, formats, that ``resources`` does not also request the GPU
resource. What it cannot (a job against its shape) is the operator's job.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from vlm_operator.api.base import (
    AGE_COLUMN,
    ApiModel,
    KindInfo,
    PrinterColumn,
    Resource,
    Rule,
    StatusModel,
    cel,
)
from vlm_operator.api.common import (
    RESOURCE_NAME_RE,
    Mode,
    ModelRef,
    NodeSelector,
    Quantity,
    ResourceRequirements,
    Tolerations,
)
from vlm_operator.api.conditions import Conditions
from vlm_operator.api.data_limits import DataLimits
from vlm_operator.api.policy import PodPolicy


class Precision(StrEnum):
    """Numeric precision of training: auto = bf16 on GPUs, fp32 on CPU."""

    AUTO = "auto"
    BF16 = "bf16"
    FP32 = "fp32"


class PullPolicy(StrEnum):
    """When the kubelet pulls the trainer image."""

    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class ModelSize(ApiModel):
    """Architecture numbers of the base model, for the memory model (docs/memory-model.md)."""

    parameters: int = Field(..., ge=1, description="Every parameter, vision tower included.")
    hidden_size: int = Field(..., ge=1, description="The language model's hidden size.")
    intermediate_size: int = Field(..., ge=1, description="The language model's MLP width.")
    layers: int = Field(..., ge=1, description="Decoder layers of the language model.")
    vocab_size: int = Field(..., ge=1, description="Rows of the output embedding.")
    tied_embeddings: bool = Field(
        False, description="Whether the output head shares the input embedding's weights."
    )


_GPU_NOT_IN_RESOURCES = (
    "resources must not set the GPU resource (gpuResource); GPUs come from gpusPerNode"
)


class TrainingShapeSpec(ApiModel):
    """Desired state of a TrainingShape."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            Rule(
                "!has(self.resources) || ((!has(self.resources.requests) || "
                "!(self.gpuResource in self.resources.requests)) && "
                "(!has(self.resources.limits) || !(self.gpuResource in self.resources.limits)))",
                _GPU_NOT_IN_RESOURCES,
                field_path=".resources",
                reason="FieldValueForbidden",
            )
        )
    )

    base_model: ModelRef = Field(
        ...,
        description="Model to fine-tune: a Hugging Face id such as Qwen/Qwen3-VL-8B-Instruct "
        "(downloaded by the trainer, or found in its cache), or a folder in HF format as "
        "pvc://<claim>/<path> or file:///<path>.",
    )
    processor: ModelRef | None = Field(
        None,
        description="Processor/tokenizer to use, in the same forms as baseModel; defaults to "
        "baseModel.",
    )
    max_context: int = Field(
        ...,
        ge=16,
        le=1_048_576,
        description="Longest sequence in tokens (text plus image tokens) this shape is sized "
        "for; a job's hyperparameters.maxSeqLen may not exceed it.",
    )
    gpus_per_node: int = Field(
        1,
        ge=0,
        le=16,
        description="GPUs per trainer pod (one pod per node); 0 trains on CPU. The trainer runs "
        "one process per GPU.",
    )
    nodes: int = Field(
        1,
        ge=1,
        le=256,
        description="Trainer pods per job. More than 1 makes an Indexed Job with a headless "
        "Service for rendezvous.",
    )
    gpu_resource: Annotated[str, Field(max_length=253, pattern=RESOURCE_NAME_RE)] = Field(
        "nvidia.com/gpu",
        description="Extended resource name the GPUs are requested as.",
    )
    image: Annotated[str, Field(min_length=1, max_length=512, pattern=r"^\S+$")] | None = Field(
        None,
        description="Trainer container image; defaults to the image the operator was "
        "installed with (Helm value trainer.image).",
    )
    image_pull_policy: PullPolicy | None = Field(
        None, description="Always, IfNotPresent or Never; Kubernetes' default when unset."
    )
    resources: ResourceRequirements | None = Field(
        None,
        description="CPU, memory and ephemeral storage of each trainer pod. Do not list the "
        "GPU resource here: it is set from gpusPerNode.",
    )
    shm_size: Quantity | None = Field(
        None,
        description="Size of the in-memory /dev/shm volume (for example 16Gi); data-loader "
        "workers and NCCL need more than the container runtime's 64Mi default.",
    )
    node_selector: NodeSelector | None = Field(
        None, description="Labels a node must have to run trainer pods of this shape."
    )
    tolerations: Tolerations | None = Field(
        None, description="Taints trainer pods of this shape tolerate (for example GPU taints)."
    )
    termination_grace_period_seconds: int = Field(
        300,
        ge=10,
        le=86400,
        description="Seconds a trainer pod gets between SIGTERM (preemption, suspension, "
        "eviction) and SIGKILL to finish its step and write a snapshot at that step. Budget: "
        "step time + 2 x snapshot bytes / disk bytes per second (write, then re-read for the "
        "sha256) + 30 s. A full fine-tune of an 8B model in bf16 with AdamW snapshots about "
        "48 GB (16 GB weights + 32 GB optimizer moments): ~100 s at 1 GB/s, ~200 s at 500 MB/s; "
        "a LoRA snapshot is well under 1 GB. Raise it for slower storage or bigger models.",
    )
    precision: Precision = Field(
        Precision.AUTO, description="auto (bf16 on GPUs, fp32 on CPU), bf16 or fp32."
    )
    max_lora_rank: int = Field(
        256,
        ge=0,
        le=4096,
        description="Largest hyperparameters.loraRank a job may ask for (checked by the operator).",
    )
    allow_full_fine_tune: bool = Field(
        True,
        description="Whether jobs may set loraRank 0 (train every weight); turn off when full "
        "fine-tuning does not fit the GPUs.",
    )
    gpu_memory: Quantity | None = Field(
        None,
        description="Memory of one GPU (for example 80Gi). When set, the operator checks with "
        "its memory model (docs/memory-model.md) that training at maxContext fits: full "
        "fine-tuning when allowFullFineTune, else LoRA at maxLoraRank; the shape is "
        "Ready=False/DoesNotFit, with the numbers, when it does not.",
    )
    model_size: ModelSize | None = Field(
        None,
        description="Architecture numbers of baseModel for the memory check; defaults to the "
        "operator's table of known Qwen3-VL ids. Without either, the check is skipped.",
    )
    modes: Annotated[
        list[Mode],
        Field(min_length=1, max_length=3, json_schema_extra={"x-kubernetes-list-type": "set"}),
    ] = Field(
        default_factory=lambda: [Mode.SFT, Mode.DPO, Mode.RL],
        description="Training modes jobs may use with this shape (sft, dpo, rl).",
        json_schema_extra={"default": ["sft", "dpo", "rl"]},
    )

    data_limits: DataLimits | None = Field(
        None,
        description="The most a job's dataLimits may allow per JSONL line (bytes, images and "
        "pixels per record); unset fields: the trainer's defaults are the maxima.",
    )
    pod_policy: PodPolicy | None = Field(
        None,
        description="What a job may put into its trainer pods through podOverrides (volume "
        "types, Secrets, ServiceAccount, tolerations, node labels, priority classes) and "
        "environment added to every pod. Unset: the closed defaults (see docs/security.md).",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainingShapeSpec:
        if len(set(self.modes)) != len(self.modes):
            raise ValueError("modes must not repeat a mode")
        if self.resources:
            for part in (self.resources.requests, self.resources.limits):
                if part and self.gpu_resource in part:
                    raise ValueError(_GPU_NOT_IN_RESOURCES)
        return self

    @property
    def processor_ref(self) -> str:
        return self.processor or self.base_model

    @property
    def total_gpus(self) -> int:
        return self.gpus_per_node * self.nodes


class TrainingShapeStatus(StatusModel):
    """Observed state of a TrainingShape, written by the operator."""

    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the operator last processed."
    )
    version: str | None = Field(
        None,
        max_length=64,
        description="Hash of the spec; TrainerJobs pin it in status.shapeVersion when they start.",
    )
    conditions: Conditions | None = Field(
        None, description="Ready: the shape passed the operator's checks."
    )


class TrainingShape(Resource):
    """A hardware and model profile for TrainerJobs: base model, context length, GPUs per node,
    nodes, trainer image and limits. Cluster-scoped; published by admins."""

    KIND = KindInfo(
        kind="TrainingShape",
        plural="trainingshapes",
        short_names=("ts",),
        scope="Cluster",
        printer_columns=(
            PrinterColumn("GPUs", "integer", ".spec.gpusPerNode", "GPUs per node."),
            PrinterColumn("Nodes", "integer", ".spec.nodes", "Trainer pods per job."),
            PrinterColumn("Context", "integer", ".spec.maxContext", "Maximum context in tokens."),
            PrinterColumn("Model", "string", ".spec.baseModel", "Base model."),
            PrinterColumn(
                "Ready",
                "string",
                '.status.conditions[?(@.type=="Ready")].status',
                "Whether the shape can be used.",
            ),
            AGE_COLUMN,
        ),
    )

    kind: Literal["TrainingShape"] = "TrainingShape"
    spec: TrainingShapeSpec = Field(..., description="The shape's hardware and model profile.")
    status: TrainingShapeStatus | None = Field(
        None, description="Observed state, written by the operator."
    )


def shape_version(spec: TrainingShapeSpec) -> str:
    """``status.version``: a short hash of the spec with defaults filled in.

    Key order and whether a default was written out do not matter (the apiserver stores the
    defaulted spec, and the model fills the same defaults), so the version only changes when the
    shape really does."""
    canonical = json.dumps(spec.to_api(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
