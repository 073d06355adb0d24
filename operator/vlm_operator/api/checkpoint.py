"""Checkpoint (namespaced): one saved snapshot of a TrainerJob, and its promotion.

The trainer creates one per save (owner: the TrainerJob); the operator verifies its files
against the manifest and, when ``spec.promote`` is set (or the job's own ``promote`` picks its
final checkpoint), writes the output model and records it in ``status.promotion``.

Immutable: everything except ``promote``, which may be added later but not changed or removed
once set (a promotion is a one-time action; promote again from another Checkpoint).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from vlm_operator.api.base import (
    AGE_COLUMN,
    ApiModel,
    Immutable,
    KindInfo,
    PrinterColumn,
    Resource,
    Rule,
    StatusModel,
    cel,
    presence_fixed,
)
from vlm_operator.api.common import CheckpointType, LocationURI, ModelName, ModelRef, ObjectName
from vlm_operator.api.conditions import Conditions
from vlm_operator.api.job import MetricMode, MetricName, Promote

Metrics = Annotated[dict[MetricName, float], Field(max_length=32)]


class CheckpointSpec(ApiModel):
    """What a checkpoint is; written once by the trainer, except promote."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            presence_fixed("metrics"),
            Rule(
                "!has(oldSelf.promote) || (has(self.promote) && self.promote == oldSelf.promote)",
                "promote can be added after creation but not changed or removed once set",
                field_path=".promote",
            ),
        )
    )

    trainer_job: Annotated[ObjectName, Immutable("trainerJob")] = Field(
        ...,
        description="Name of the TrainerJob (same namespace) that saved it. Immutable.",
    )
    step: Annotated[int, Immutable("step")] = Field(
        ...,
        ge=0,
        description="Optimizer step at which it was saved. Immutable.",
    )
    final: Annotated[bool, Immutable("final")] = Field(
        False,
        description="Whether it is the job's final checkpoint. Immutable.",
    )
    uri: Annotated[LocationURI, Immutable("uri")] = Field(
        ...,
        description="Folder of the checkpoint (HF format plus manifest.json), pvc://<claim>/"
        "<path> or file:///<path>. Immutable.",
    )
    type: Annotated[CheckpointType, Immutable("type")] = Field(
        ...,
        description="full (all weights) or lora (an adapter for baseModel). Immutable.",
    )
    base_model: Annotated[ModelRef, Immutable("baseModel")] = Field(
        ...,
        description="Model the job started from; a lora checkpoint needs it to be used. Immutable.",
    )
    metrics: Annotated[Metrics | None, Immutable("metrics")] = Field(
        None,
        description="Metrics at save time, for example loss and eval_accuracy. Immutable.",
    )
    promote: Promote | None = Field(
        None,
        description="Publish this checkpoint as a named model. May be added later; cannot be "
        "changed or removed once set.",
    )


class CheckpointPhase(StrEnum):
    """Where a checkpoint is: being verified, usable, being promoted, promoted, broken, or
    pruned (its files were removed by keepLast)."""

    VERIFYING = "Verifying"
    AVAILABLE = "Available"
    PROMOTING = "Promoting"
    PROMOTED = "Promoted"
    FAILED = "Failed"
    PRUNED = "Pruned"


class Promotion(StatusModel):
    """The result of a promotion."""

    output_model: ModelName | None = Field(None, description="Name of the promoted model.")
    uri: LocationURI | None = Field(None, description="Folder the model was written to.")
    promoted_at: datetime | None = Field(None, description="When the promotion finished.")


class SnapshotEval(StatusModel):
    """Eval metrics of this snapshot (the job's evalDataset), from its verified manifest."""

    step: int | None = Field(None, ge=0, description="Step the metrics were measured at.")
    metric: str | None = Field(
        None, max_length=63, description="The headline metric (shown by kubectl get ckpt)."
    )
    mode: MetricMode | None = Field(None, description="min or max: which is better.")
    value: float | None = Field(None, description="Value of the headline metric.")
    metrics: Metrics | None = Field(None, description="Every eval metric by name.")


class CheckpointStatus(StatusModel):
    """Observed state of a Checkpoint, written by the operator."""

    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the operator last processed."
    )
    phase: CheckpointPhase | None = Field(
        None, description="Verifying, Available, Promoting, Promoted, Failed or Pruned."
    )
    conditions: Conditions | None = Field(
        None, description="Verified and Promoted, each with a reason."
    )
    verified: bool | None = Field(
        None, description="Whether every file matched the sha256 in its manifest."
    )
    size_bytes: int | None = Field(None, ge=0, description="Total size of the checkpoint's files.")
    promotion: Promotion | None = Field(None, description="Set once the promotion finished.")
    eval: SnapshotEval | None = Field(
        None, description="Eval metrics of the snapshot, when the job has an evalDataset."
    )


class Checkpoint(Resource):
    """A saved snapshot of a TrainerJob (full weights or a LoRA adapter), verifiable and
    promotable to a named model."""

    KIND = KindInfo(
        kind="Checkpoint",
        plural="checkpoints",
        short_names=("ckpt",),
        scope="Namespaced",
        printer_columns=(
            PrinterColumn("Job", "string", ".spec.trainerJob", "TrainerJob that saved it."),
            PrinterColumn("Type", "string", ".spec.type", "full or lora."),
            PrinterColumn("Step", "integer", ".spec.step", "Optimizer step."),
            PrinterColumn("Phase", "string", ".status.phase", "Where the checkpoint is."),
            PrinterColumn(
                "Eval", "number", ".status.eval.value", "Headline eval metric (status.eval)."
            ),
            PrinterColumn(
                "Metric", "string", ".status.eval.metric", "Name of that metric.", priority=1
            ),
            PrinterColumn(
                "Output Model",
                "string",
                ".status.promotion.outputModel",
                "Name it was promoted to.",
            ),
            PrinterColumn("Size", "integer", ".status.sizeBytes", "Size in bytes.", priority=1),
            AGE_COLUMN,
        ),
    )

    kind: Literal["Checkpoint"] = "Checkpoint"
    spec: CheckpointSpec = Field(..., description="What the checkpoint is and holds.")
    status: CheckpointStatus | None = Field(
        None, description="Observed state, written by the operator."
    )
