"""Status conditions: the Condition model, the condition types and reasons, and helpers.

Conditions follow the Kubernetes convention (metav1.Condition): a list keyed by ``type``, each
with ``status`` True/False/Unknown, a CamelCase ``reason``, a human ``message``,
``lastTransitionTime`` (changes only when ``status`` changes) and ``observedGeneration``.
``kubectl wait --for=condition=Succeeded tj/NAME`` reads them.

The helpers work on plain dicts in API form (camelCase), which is what a status patch carries,
so the operator never has to build a Condition model to write one:

    conds = set_condition(status.get("conditions"), new_condition(
        ConditionType.ADMITTED, False, Reason.SHAPE_NOT_FOUND, "TrainingShape 'x' not found",
        observed_generation=meta["generation"]))
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field

from vlm_operator.api.base import StatusModel

#: metav1.Condition's own patterns.
CONDITION_TYPE_RE = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
REASON_RE = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class ConditionStatus(StrEnum):
    """Whether the condition holds."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(StrEnum):
    """Every condition type the operator sets, by kind."""

    # TrainingShape
    READY = "Ready"
    # TrainerJob
    ADMITTED = "Admitted"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    # Checkpoint
    VERIFIED = "Verified"
    PROMOTED = "Promoted"


SHAPE_CONDITIONS = (ConditionType.READY,)
JOB_CONDITIONS = (
    ConditionType.ADMITTED,
    ConditionType.RUNNING,
    ConditionType.SUCCEEDED,
    ConditionType.FAILED,
    ConditionType.SUSPENDED,
)
CHECKPOINT_CONDITIONS = (ConditionType.VERIFIED, ConditionType.PROMOTED)


class Reason(StrEnum):
    """Every reason the operator writes; ``REASON_HELP`` says what each means and what to do."""

    # TrainingShape Ready
    VALID = "Valid"
    INVALID_SPEC = "InvalidSpec"  # also TrainerJob Admitted=False / Failed
    DOES_NOT_FIT = "DoesNotFit"
    # TrainerJob Admitted
    SHAPE_NOT_FOUND = "ShapeNotFound"
    SHAPE_NOT_READY = "ShapeNotReady"
    SHAPE_RESOLVED = "ShapeResolved"
    QUEUED = "Queued"
    INIT_FROM_NOT_READY = "InitFromNotReady"
    # TrainerJob Running
    JOB_CREATED = "JobCreated"
    PODS_PENDING = "PodsPending"
    TRAINING = "Training"
    RETRYING = "Retrying"
    PREEMPTED = "Preempted"
    # TrainerJob Succeeded / Failed
    COMPLETED = "Completed"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    DATA_INVALID = "DataInvalid"
    TRAINER_FAILED = "TrainerFailed"
    STORAGE_FULL = "StorageFull"
    JOB_DELETED = "JobDeleted"
    CHILD_CONFLICT = "ChildConflict"
    # TrainerJob Suspended
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    # Checkpoint Verified / Promoted
    VERIFYING = "Verifying"
    MANIFEST_VERIFIED = "ManifestVerified"
    VERIFICATION_FAILED = "VerificationFailed"
    PROMOTION_RUNNING = "PromotionRunning"
    PROMOTION_SUCCEEDED = "PromotionSucceeded"
    PROMOTION_FAILED = "PromotionFailed"
    NOT_REQUESTED = "NotRequested"
    NOT_OWNED = "NotOwned"
    MODEL_EXISTS = "ModelExists"
    PRUNED = "Pruned"
    # TrainerJob Event when spec.promote.select is best
    CHECKPOINT_SELECTED = "CheckpointSelected"


#: One line per reason: what happened and what the user can do (the README's troubleshooting
#: table is generated from this).
REASON_HELP: dict[Reason, str] = {
    Reason.VALID: "The shape passed the operator's checks and can be used.",
    Reason.INVALID_SPEC: "The spec breaks a rule CEL cannot check (for example loraRank above "
    "the shape's maxLoraRank, a mode the shape does not allow, maxSeqLen above maxContext), "
    "or the trainer refused its config (exit code 78, for example a base model path that does "
    "not exist); the message names the field. Fix the spec or the shape; it is not retried.",
    Reason.DOES_NOT_FIT: "The memory model (docs/memory-model.md) predicts that training at "
    "maxContext does not fit gpuMemory (the message has the per-GPU GiB by term). Add GPUs, "
    "lower maxContext, set allowFullFineTune false or lower maxLoraRank.",
    Reason.SHAPE_NOT_FOUND: "spec.shape names no TrainingShape. Create it (kubectl get ts); the "
    "job is admitted by itself once it exists.",
    Reason.SHAPE_NOT_READY: "The TrainingShape exists but is not Ready; see its conditions.",
    Reason.SHAPE_RESOLVED: "The shape was found and its version pinned in status.shapeVersion.",
    Reason.QUEUED: "Waiting for Kueue to admit the job (spec.queueName).",
    Reason.INIT_FROM_NOT_READY: "spec.initFrom names a Checkpoint or promoted model that does "
    "not exist or is not verified yet; the job is admitted by itself once it is.",
    Reason.JOB_CREATED: "The batch/v1 Job exists; pods are being created.",
    Reason.PODS_PENDING: "Pods are not scheduled yet, usually for lack of free GPUs; see "
    "kubectl describe pod.",
    Reason.TRAINING: "The trainer is running; status.progress is updated as it goes.",
    Reason.RETRYING: "A pod failed or was deleted; the retry resumes from the latest checkpoint.",
    Reason.COMPLETED: "Training finished and the final checkpoint was written.",
    Reason.BACKOFF_LIMIT_EXCEEDED: "The trainer failed more than spec.backoffLimit times; the "
    "message holds the last termination message.",
    Reason.DEADLINE_EXCEEDED: "The job ran longer than spec.activeDeadlineSeconds.",
    Reason.DATA_INVALID: "The dataset has bad records (trainer exit code 65, not retried); the "
    "message lists the lines and fields (run vlm-trainer validate-data locally to see all).",
    Reason.TRAINER_FAILED: "The trainer exited with an error; the message holds its exit code "
    "and termination message.",
    Reason.PREEMPTED: "The trainer was stopped by a disruption (Kueue preemption, "
    "suspension, eviction), wrote a snapshot at its current step and will resume from it; "
    "this does not count against spec.backoffLimit.",
    Reason.STORAGE_FULL: "The checkpoint storage is full (trainer exit code 74, not retried): "
    "free space or give the job more storage; the message says how many bytes were needed.",
    Reason.JOB_DELETED: "The batch/v1 Job was deleted from outside the operator.",
    Reason.CHILD_CONFLICT: "An object the job needs (Job, ConfigMap, Service, ServiceAccount, "
    "Role or RoleBinding; the message names it) exists and was not created for this TrainerJob "
    "(no controller ownerReference with its UID). The operator leaves it untouched; rename the "
    "job or remove the object. Objects of an earlier job of the same name only delay the start "
    "until they are garbage-collected.",
    Reason.SUSPENDED: "spec.suspend is true: pods were stopped; checkpoints are kept.",
    Reason.RESUMED: "spec.suspend was cleared; training resumes from the latest checkpoint.",
    Reason.VERIFYING: "The checkpoint's manifest and file hashes are being checked.",
    Reason.MANIFEST_VERIFIED: "Every file matches the sha256 in the checkpoint's manifest.",
    Reason.VERIFICATION_FAILED: "A file is missing or its hash differs; do not promote it.",
    Reason.PROMOTION_RUNNING: "The promotion Job is writing the output model.",
    Reason.PROMOTION_SUCCEEDED: "The output model was written; see status.promotion.",
    Reason.PROMOTION_FAILED: "The promotion Job failed; the message says why.",
    Reason.NOT_REQUESTED: "No promotion was requested (spec.promote is not set).",
    Reason.NOT_OWNED: "The Checkpoint is not owned by the TrainerJob it names (ownerReference "
    "UID), or its URI is not under that job's storage folder; it is never promoted.",
    Reason.MODEL_EXISTS: "A model with the output name exists already; it was left as it is. "
    "Choose another outputModel, or set promote.overwrite: true to replace it.",
    Reason.PRUNED: "keepLast removed the snapshot's files; the Checkpoint is kept as a record "
    "and cannot be promoted.",
    Reason.CHECKPOINT_SELECTED: "spec.promote.select best chose the checkpoint to promote; "
    "status.selectedCheckpoint says which and why.",
}


class Condition(StatusModel):
    """One observation of the object's state (metav1.Condition)."""

    type: str = Field(
        ...,
        max_length=316,
        pattern=CONDITION_TYPE_RE,
        description="Condition type, for example Ready, Admitted, Running, Succeeded, Failed.",
    )
    status: ConditionStatus = Field(..., description="True, False or Unknown.")
    reason: str = Field(
        ...,
        min_length=1,
        max_length=1024,
        pattern=REASON_RE,
        description="CamelCase reason for the last transition, for example ShapeNotFound.",
    )
    message: str = Field(
        "", max_length=32768, description="Human-readable details about the last transition."
    )
    last_transition_time: datetime = Field(
        ..., description="When status last changed from one value to another."
    )
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation of the spec this condition was computed from."
    )


Conditions = Annotated[
    list[Condition],
    Field(
        max_length=16,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    ),
]


def now_rfc3339() -> str:
    """The current time as Kubernetes writes it: UTC, seconds, a trailing Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_condition(
    type: str,
    status: bool | str,
    reason: str,
    message: str = "",
    *,
    observed_generation: int | None = None,
    now: str | None = None,
) -> dict[str, Any]:
    """A condition dict in API form. ``status`` may be a bool or True/False/Unknown."""
    if isinstance(status, bool):
        status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    cond: dict[str, Any] = {
        "type": str(type),
        "status": str(ConditionStatus(status)),
        "reason": str(reason),
        "message": message,
        "lastTransitionTime": now or now_rfc3339(),
    }
    if observed_generation is not None:
        cond["observedGeneration"] = observed_generation
    return cond


def find_condition(conditions: list[dict[str, Any]] | None, type: str) -> dict[str, Any] | None:
    """The condition of that type, or None."""
    return next((c for c in conditions or () if c.get("type") == type), None)


def is_condition_true(conditions: list[dict[str, Any]] | None, type: str) -> bool:
    cond = find_condition(conditions, type)
    return cond is not None and cond.get("status") == ConditionStatus.TRUE


def set_condition(
    conditions: list[dict[str, Any]] | None, condition: dict[str, Any]
) -> list[dict[str, Any]]:
    """A new list with ``condition`` added or replacing the one of its type.

    Like apimachinery's ``meta.SetStatusCondition``: when the status does not change, the old
    ``lastTransitionTime`` is kept, so re-running a reconcile does not churn the object. The
    input list is not modified; order is kept and a new type is appended."""
    out: list[dict[str, Any]] = []
    replaced = False
    for cond in conditions or ():
        if cond.get("type") != condition["type"]:
            out.append(dict(cond))
            continue
        new = dict(condition)
        if cond.get("status") == new["status"] and cond.get("lastTransitionTime"):
            new["lastTransitionTime"] = cond["lastTransitionTime"]
        out.append(new)
        replaced = True
    if not replaced:
        out.append(dict(condition))
    return out
