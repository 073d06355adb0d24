"""TrainerJob (namespaced): one SFT, DPO or RL training run on a TrainingShape.

Supported: the three modes; a JSONL dataset (OpenAI chat format: ``{"messages": ...}`` for SFT
and RL prompts, ``{"chosen": ..., "rejected": ...}`` for DPO) on a PVC or a local path; an
optional eval dataset; hyperparameters with the trainer's names in camelCase; periodic
checkpoints; promotion of the final checkpoint; suspend/resume, Kueue and the usual batch/v1 Job
knobs; pod additions.

Immutable after creation (CEL ``self == oldSelf``): everything that shapes the pods (shape,
mode, datasets, hyperparameters, checkpointing, podOverrides, queueName). Mutable: ``suspend``,
``backoffLimit``, ``activeDeadlineSeconds``, ``ttlSecondsAfterFinished``, and ``promote``, which
may be added later (to promote a finished job) but not changed or removed once set.

Checked by the operator, not CEL (they need the shape): ``shape_violations`` below.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

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
from vlm_operator.api.common import (
    DNS_LABEL,
    FileURI,
    LocationURI,
    Mode,
    ModelName,
    ObjectName,
)
from vlm_operator.api.conditions import Conditions
from vlm_operator.api.data_limits import DataLimits, limit_violations
from vlm_operator.api.pod import PodOverrides
from vlm_operator.api.policy import policy_violations
from vlm_operator.api.shape import TrainingShapeSpec

#: TrainerJob names become the names of the Job, Service, ServiceAccount and pods derived from
#: them (a Service name is a DNS-1035 label: it starts with a letter); 52 leaves room for a
#: suffix within Kubernetes' 63-character limit, as for CronJobs.
JOB_NAME_MAX = 52
JOB_NAME_RE = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
_JOB_NAME_MSG = (
    f"TrainerJob names must be at most {JOB_NAME_MAX} characters of lowercase letters, digits "
    "and '-', starting with a letter and ending with a letter or digit (the Job, Service and "
    "pods are named after it)"
)

QueueName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]

# --- spec parts ---------------------------------------------------------------------------------


class DatasetFormat(StrEnum):
    """How dataset lines are encoded; only JSONL in the OpenAI chat format so far."""

    JSONL = "jsonl"


class Dataset(ApiModel):
    """A dataset file."""

    uri: FileURI = Field(
        ...,
        description="Where the file is: pvc://<claim>/<path> (a PersistentVolumeClaim in the "
        "job's namespace) or file:///<path> (a path the pod already sees).",
    )
    format: DatasetFormat = Field(
        DatasetFormat.JSONL,
        description="jsonl: one JSON object per line in the OpenAI chat format, {messages} for "
        "sft and rl, {chosen, rejected} for dpo; images as base64 data: URLs.",
    )


class DpoLossType(StrEnum):
    """DPO loss variant."""

    SIGMOID = "sigmoid"
    IPO = "ipo"
    HINGE = "hinge"


class DpoSettings(ApiModel):
    """Settings of direct preference optimisation; only with mode dpo."""

    beta: float = Field(
        0.1,
        gt=0,
        le=100,
        description="Strength of the implicit KL constraint to the reference model.",
    )
    loss_type: DpoLossType = Field(
        DpoLossType.SIGMOID, description="sigmoid (the original DPO loss), ipo or hinge."
    )
    cache_reference_logprobs: bool = Field(
        False,
        description="Compute the reference model's log-probabilities once in a first pass and "
        "cache them, instead of keeping the reference in memory during training.",
    )


_REWARD_RE = r"^([a-z][a-z0-9_]*|[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*)$"


class RlSettings(ApiModel):
    """Settings of reinforcement learning (GRPO-style, PPO-clip loss); only with mode rl."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            Rule(
                "!has(self.epsClipHigh) || self.epsClipHigh >= self.epsClip",
                "epsClipHigh must be at least epsClip",
                field_path=".epsClipHigh",
            )
        )
    )

    completions_per_prompt: int = Field(
        8,
        ge=2,
        le=256,
        description="Completions sampled per prompt (the GRPO group size); advantages are "
        "normalised within each group.",
    )
    max_completion_tokens: int = Field(
        256, ge=1, le=131_072, description="Longest completion generated in a rollout, in tokens."
    )
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature of rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus-sampling probability mass.")
    kl_beta: float = Field(
        0.0,
        ge=0,
        le=100,
        description="Weight of the KL penalty to the reference model; 0 turns it off (no "
        "reference model is loaded).",
    )
    eps_clip: float = Field(
        0.2, gt=0, le=10, description="PPO clipping range below and above a ratio of 1."
    )
    eps_clip_high: float | None = Field(
        None,
        gt=0,
        le=10,
        description="Upper clipping range when it differs from epsClip ('clip higher'); "
        "defaults to epsClip.",
    )
    reward: Annotated[str, Field(min_length=1, max_length=256, pattern=_REWARD_RE)] = Field(
        "exact_match",
        description="Reward function: a built-in name (exact_match, regex_match, numeric_match, "
        "format_check) or a Python function as module:function found in the trainer image.",
    )

    @model_validator(mode="after")
    def _clip(self) -> RlSettings:
        if self.eps_clip_high is not None and self.eps_clip_high < self.eps_clip:
            raise ValueError("epsClipHigh must be at least epsClip")
        return self


class LrSchedule(StrEnum):
    """Learning-rate decay after warmup."""

    COSINE = "cosine"
    LINEAR = "linear"
    CONSTANT = "constant"


class TrainOn(StrEnum):
    """Which assistant turns carry loss."""

    ALL_ASSISTANT = "all_assistant"
    LAST_ASSISTANT = "last_assistant"


class OnTruncation(StrEnum):
    """What happens to a record longer than maxSeqLen whose cut would split an image."""

    SKIP = "skip"
    ERROR = "error"


class Hyperparameters(ApiModel):
    """Optimisation settings; names match the trainer's config keys (in camelCase)."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            Rule(
                "!has(self.loraAlpha) || self.loraRank > 0",
                "loraAlpha is only allowed with loraRank > 0 (LoRA)",
                field_path=".loraAlpha",
                reason="FieldValueForbidden",
            ),
            Rule(
                "!has(self.maxSteps) || self.warmupSteps <= self.maxSteps",
                "warmupSteps must not exceed maxSteps",
                field_path=".warmupSteps",
            ),
        )
    )

    learning_rate: float = Field(
        1.0e-5,
        gt=0,
        le=1,
        description="Peak learning rate (AdamW). Typical: 1e-5 for full fine-tuning, 1e-4 to "
        "2e-4 for LoRA.",
    )
    lr_schedule: LrSchedule = Field(
        LrSchedule.COSINE, description="Decay after warmup: cosine, linear or constant."
    )
    min_lr_ratio: float = Field(
        0.0, ge=0, le=1, description="Final learning rate as a fraction of the peak."
    )
    warmup_steps: int = Field(
        0, ge=0, le=1_000_000, description="Optimizer steps of linear warmup from 0."
    )
    epochs: int = Field(1, ge=1, le=1000, description="Passes over the dataset.")
    max_steps: int | None = Field(
        None,
        ge=1,
        le=100_000_000,
        description="Stop after this many optimizer steps, even before epochs are done.",
    )
    batch_size: int = Field(
        4, ge=1, le=4096, description="Sequences per forward pass on each process (micro-batch)."
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        le=4096,
        description="Micro-batches per optimizer step; the global batch is batchSize x this x "
        "the number of processes.",
    )
    tokens_per_batch: int | None = Field(
        None,
        ge=16,
        le=16_777_216,
        description="SFT only: pack whole samples without padding into micro-batches of at most "
        "this many tokens (batchSize is then unused); at least maxSeqLen. Unset: micro-batches "
        "of batchSize padded sequences.",
    )
    max_seq_len: int | None = Field(
        None,
        ge=16,
        le=1_048_576,
        description="Longest training sequence in tokens, images included; defaults to the "
        "shape's maxContext and may not exceed it.",
    )
    on_truncation: OnTruncation = Field(
        OnTruncation.SKIP,
        description="A record longer than maxSeqLen whose cut would split an image or drop every "
        "assistant token: skip it (counted in the logs) or fail before training.",
    )
    train_on: TrainOn = Field(
        TrainOn.ALL_ASSISTANT,
        description="Loss on all assistant turns (all_assistant) or only the last one "
        "(last_assistant).",
    )
    lora_rank: int = Field(
        0,
        ge=0,
        le=4096,
        description="Rank of LoRA adapters; 0 trains every weight (full fine-tune). May not "
        "exceed the shape's maxLoraRank.",
    )
    lora_alpha: int | None = Field(
        None,
        ge=1,
        le=65_536,
        description="LoRA scaling numerator (scale = loraAlpha / loraRank); the trainer's "
        "default when unset. Only with loraRank > 0.",
    )
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA adapters' input.")
    weight_decay: float = Field(
        0.0, ge=0, le=10, description="AdamW weight decay (not on biases and norm scales)."
    )
    adam_beta1: float = Field(
        0.9, ge=0, lt=1, description="AdamW's beta1: decay of the running mean of gradients."
    )
    adam_beta2: float = Field(
        0.999,
        ge=0,
        lt=1,
        description="AdamW's beta2: decay of the running mean of squared gradients.",
    )
    adam_eps: float = Field(
        1e-8, gt=0, le=1, description="AdamW's epsilon, added to the denominator for stability."
    )
    grad_clip_norm: float = Field(
        1.0, ge=0, description="Clip the global gradient norm to this; 0 disables clipping."
    )
    freeze_vision: bool = Field(
        False, description="Keep the vision encoder frozen; train only the language model."
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass: much less memory for long "
        "contexts, about a third more compute.",
    )
    seed: int = Field(
        0, ge=0, le=4_294_967_295, description="Seed for data order, initialisation and sampling."
    )
    dpo: DpoSettings | None = Field(
        None, description="DPO settings; only with mode dpo (defaults apply when omitted)."
    )
    rl: RlSettings | None = Field(
        None, description="RL settings; only with mode rl (defaults apply when omitted)."
    )

    @model_validator(mode="after")
    def _check(self) -> Hyperparameters:
        if self.lora_alpha is not None and self.lora_rank == 0:
            raise ValueError("loraAlpha is only allowed with loraRank > 0 (LoRA)")
        if self.max_steps is not None and self.warmup_steps > self.max_steps:
            raise ValueError("warmupSteps must not exceed maxSteps")
        return self


class Checkpointing(ApiModel):
    """When and where checkpoints are written."""

    every_steps: int = Field(
        500,
        ge=0,
        le=100_000_000,
        description="Save every this many optimizer steps (each save becomes a Checkpoint "
        "object); 0 saves only the final checkpoint. A restarted pod resumes from the latest.",
    )
    keep_last: int = Field(
        3,
        ge=0,
        le=1000,
        description="Periodic checkpoints kept on storage (older ones are deleted); 0 keeps "
        "all. The final checkpoint is always kept.",
    )
    storage: LocationURI | None = Field(
        None,
        description="Folder for checkpoints, pvc://<claim>[/<path>] or file:///<path>; the "
        "job writes to <storage>/<namespace>/<job name>-<job uid>/, so a job re-created under "
        "the same name never sees an earlier run's files. Defaults to the operator's checkpoint "
        "storage (Helm value storage.checkpoints).",
    )


#: An eval metric's name as the trainer writes it (eval_loss, eval_exact_match ...).
MetricName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_./-]+$")]


class PromoteSelect(StrEnum):
    """Which of the job's checkpoints is promoted."""

    FINAL = "final"
    BEST = "best"


class MetricMode(StrEnum):
    """Whether a lower or a higher metric is better."""

    MIN = "min"
    MAX = "max"


class Promote(ApiModel):
    """Publish a checkpoint as a named model (LoRA merged into the base, HF format)."""

    output_model: ModelName = Field(
        ...,
        description="Name of the promoted model: 1-63 lowercase letters, digits and '-', "
        "starting and ending with a letter or digit. It becomes a folder in the operator's "
        "models location.",
    )
    overwrite: bool | None = Field(
        None,
        description="true: replace a model that already exists under outputModel. Unset or "
        "false: such a promotion fails with reason ModelExists and the existing model is left "
        "as it is.",
    )


class JobPromote(Promote):
    """Publish one of the job's checkpoints as a named model once the job succeeded."""

    select: PromoteSelect = Field(
        PromoteSelect.FINAL,
        description="final: the job's final checkpoint. best: the checkpoint with the best "
        "value of metric in its status.eval (every snapshot is evaluated on evalDataset, which "
        "best requires; ties go to the earlier step); the choice and why go into "
        "status.selectedCheckpoint and an Event. Set best when creating the job: the trainer "
        "then keeps that snapshot from keepLast pruning.",
    )
    metric: MetricName = Field(
        "eval_loss",
        description="Eval metric that select: best compares, e.g. eval_loss, eval_exact_match, "
        "eval_preference_accuracy (dpo), eval_reward_mean (rl).",
    )
    mode: MetricMode = Field(
        MetricMode.MIN, description="min: lower is better (losses); max: higher is better."
    )


class InitFrom(ApiModel):
    """Earlier weights to start from, instead of the shape's base model."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            Rule(
                "has(self.checkpoint) != has(self.model)",
                "set exactly one of checkpoint and model",
            )
        )
    )

    checkpoint: ObjectName | None = Field(
        None,
        description="A verified Checkpoint in the job's namespace (e.g. <job>-final). A full "
        "checkpoint is loaded as it is; a LoRA checkpoint is merged into its base model first "
        "and needs loraRank 0 here (to stack a new adapter, promote it and use model). Until "
        "this job finishes, the Checkpoint is annotated vlmtrain.dev/in-use-by.<job UID> and "
        "its job's keepLast does not prune it.",
    )
    model: ModelName | None = Field(
        None,
        description="A model promoted in the job's namespace (a Checkpoint's "
        "status.promotion.outputModel): a standalone HF model.",
    )

    @model_validator(mode="after")
    def _one(self) -> InitFrom:
        if (self.checkpoint is None) == (self.model is None):
            raise ValueError("set exactly one of checkpoint and model")
        return self


_PROMOTE_ONCE = Rule(
    "!has(oldSelf.promote) || (has(self.promote) && self.promote == oldSelf.promote)",
    "promote can be added after creation but not changed or removed once set",
    field_path=".promote",
)


class TrainerJobSpec(ApiModel):
    """Desired state of a TrainerJob."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            Rule(
                "!has(self.hyperparameters.dpo) || self.mode == 'dpo'",
                "hyperparameters.dpo is only allowed when mode is dpo",
                field_path=".hyperparameters.dpo",
                reason="FieldValueForbidden",
            ),
            Rule(
                "!has(self.hyperparameters.tokensPerBatch) || self.mode == 'sft'",
                "hyperparameters.tokensPerBatch (packing) is only supported when mode is sft",
                field_path=".hyperparameters.tokensPerBatch",
                reason="FieldValueForbidden",
            ),
            Rule(
                "!has(self.hyperparameters.rl) || self.mode == 'rl'",
                "hyperparameters.rl is only allowed when mode is rl",
                field_path=".hyperparameters.rl",
                reason="FieldValueForbidden",
            ),
            presence_fixed("evalDataset"),
            presence_fixed("podOverrides"),
            presence_fixed("queueName"),
            presence_fixed("initFrom"),
            presence_fixed("workloadPriorityClass"),
            Rule(
                "!has(self.workloadPriorityClass) || has(self.queueName)",
                "workloadPriorityClass needs queueName (it is Kueue's priority)",
                field_path=".workloadPriorityClass",
                reason="FieldValueForbidden",
            ),
            _PROMOTE_ONCE,
            Rule(
                "!has(self.promote) || self.promote.select != 'best' || has(self.evalDataset)",
                "promote.select best compares eval metrics: it needs evalDataset",
                field_path=".promote.select",
            ),
        )
    )

    shape: Annotated[ObjectName, Immutable("shape")] = Field(
        ...,
        description="Name of the TrainingShape (cluster-scoped) to run on. Immutable.",
    )
    mode: Annotated[Mode, Immutable("mode")] = Field(
        ...,
        description="Training method: sft, dpo or rl. Immutable.",
    )
    dataset: Annotated[Dataset, Immutable("dataset")] = Field(
        ...,
        description="Training data. Immutable.",
    )
    eval_dataset: Annotated[Dataset | None, Immutable("evalDataset")] = Field(
        None,
        description="Held-out data evaluated at every checkpoint (same format). Immutable.",
    )
    init_from: Annotated[InitFrom | None, Immutable("initFrom")] = Field(
        None,
        description="Start from a Checkpoint or a promoted model instead of the shape's base "
        "model (e.g. DPO from an SFT result); its architecture and processor must be the "
        "shape's. The job waits (InitFromNotReady) until it exists and is verified; the one "
        "used is recorded in status.initFrom. Immutable.",
    )
    hyperparameters: Annotated[Hyperparameters, Immutable("hyperparameters")] = Field(
        default_factory=Hyperparameters,
        description="Optimisation settings; every field has a default. Immutable.",
        json_schema_extra={"default": {}},
    )
    checkpointing: Annotated[Checkpointing, Immutable("checkpointing")] = Field(
        default_factory=Checkpointing,
        description="When and where checkpoints are saved. Immutable.",
        json_schema_extra={"default": {}},
    )
    promote: JobPromote | None = Field(
        None,
        description="Promote the final (or the best) checkpoint to a named model when the job "
        "succeeds. May be added after the job finished; cannot be changed or removed once set.",
    )
    suspend: bool = Field(
        False,
        description="Stop the trainer pods (true) or let them run (false); training resumes "
        "from the latest checkpoint.",
    )
    queue_name: Annotated[QueueName | None, Immutable("queueName")] = Field(
        None,
        description="Kueue LocalQueue to submit to: the Job gets the kueue.x-k8s.io/"
        "queue-name label and starts suspended until Kueue admits it. Immutable.",
    )
    workload_priority_class: Annotated[QueueName | None, Immutable("workloadPriorityClass")] = (
        Field(
            None,
            description="Kueue WorkloadPriorityClass of the job (the kueue.x-k8s.io/priority-class "
            "label on its Job): with preemption enabled in the ClusterQueue, a higher one evicts a "
            "lower one, which snapshots and later resumes. Needs queueName. Immutable.",
        )
    )
    backoff_limit: int = Field(
        3,
        ge=0,
        le=100,
        description="Retries of a failed trainer pod before the job fails; each retry resumes "
        "from the latest checkpoint.",
    )
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Fail the job after it has run this many seconds."
    )
    ttl_seconds_after_finished: int | None = Field(
        None,
        ge=0,
        description="Delete the batch/v1 Job and its pods this long after the job finished "
        "(the TrainerJob and its Checkpoints stay).",
    )
    pod_overrides: Annotated[PodOverrides | None, Immutable("podOverrides")] = Field(
        None,
        description="Environment, volumes and placement added to the trainer pods. Immutable.",
    )
    data_limits: Annotated[DataLimits | None, Immutable("dataLimits")] = Field(
        None,
        description="Per-line limits of the datasets (line bytes, images and pixels per "
        "record), within the TrainingShape's dataLimits (else the trainer's defaults). "
        "Immutable.",
    )

    @model_validator(mode="after")
    def _mode_settings(self) -> TrainerJobSpec:
        if self.hyperparameters.dpo is not None and self.mode != Mode.DPO:
            raise ValueError("hyperparameters.dpo is only allowed when mode is dpo")
        if self.hyperparameters.rl is not None and self.mode != Mode.RL:
            raise ValueError("hyperparameters.rl is only allowed when mode is rl")
        if self.promote and self.promote.select == PromoteSelect.BEST and not self.eval_dataset:
            raise ValueError("promote.select best compares eval metrics: it needs evalDataset")
        if self.hyperparameters.tokens_per_batch is not None and self.mode != Mode.SFT:
            raise ValueError(
                "hyperparameters.tokensPerBatch (packing) is only supported when mode is sft"
            )
        if self.workload_priority_class and not self.queue_name:
            raise ValueError("workloadPriorityClass needs queueName (it is Kueue's priority)")
        return self

    def dpo_settings(self) -> DpoSettings:
        """The DPO settings with defaults filled in (the field may be omitted)."""
        return self.hyperparameters.dpo or DpoSettings()

    def rl_settings(self) -> RlSettings:
        """The RL settings with defaults filled in (the field may be omitted)."""
        return self.hyperparameters.rl or RlSettings()


# --- status -------------------------------------------------------------------------------------


class JobPhase(StrEnum):
    """Summary of where a TrainerJob is; the conditions carry the details."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class Progress(StatusModel):
    """Training progress, reported by the trainer (rate-limited)."""

    step: int | None = Field(None, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(None, ge=0, description="Optimizer steps planned.")
    percent: int | None = Field(None, ge=0, le=100, description="step / totalSteps in percent.")
    epoch: float | None = Field(None, ge=0, description="Epochs done, fractional.")
    loss: float | None = Field(None, description="Training loss of the latest step.")
    tokens_per_second: float | None = Field(
        None, ge=0, description="Training throughput over the latest steps, all processes."
    )
    eta_seconds: int | None = Field(None, ge=0, description="Estimated seconds to completion.")
    updated_at: datetime | None = Field(None, description="When the trainer last reported.")


class InitFromStatus(StatusModel):
    """The weights the job started from (spec.initFrom), resolved at admission."""

    checkpoint: str | None = Field(None, max_length=253, description="Checkpoint used.")
    uid: str | None = Field(None, max_length=64, description="Its metadata.uid.")
    uri: str | None = Field(None, max_length=1024, description="Folder the weights came from.")


class SelectedCheckpoint(StatusModel):
    """The checkpoint spec.promote chose, and why."""

    checkpoint: str | None = Field(None, max_length=253, description="Checkpoint promoted.")
    step: int | None = Field(None, ge=0, description="Its step.")
    metric: str | None = Field(None, max_length=63, description="Metric compared.")
    value: float | None = Field(None, description="Its value of the metric.")
    reason: str | None = Field(None, max_length=1024, description="Why this one.")


class TrainerJobStatus(StatusModel):
    """Observed state of a TrainerJob, written by the operator and the trainer."""

    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the operator last processed."
    )
    phase: JobPhase | None = Field(
        None, description="Pending, Running, Suspended, Succeeded or Failed."
    )
    conditions: Conditions | None = Field(
        None,
        description="Admitted, Running, Succeeded, Failed and Suspended, each with a reason.",
    )
    start_time: datetime | None = Field(None, description="When the first trainer pod started.")
    completion_time: datetime | None = Field(None, description="When the job succeeded or failed.")
    shape_version: str | None = Field(
        None,
        max_length=64,
        description="status.version of the TrainingShape pinned when the job was admitted.",
    )
    progress: Progress | None = Field(None, description="Latest progress report of the trainer.")
    latest_checkpoint: str | None = Field(
        None, max_length=253, description="Name of the newest Checkpoint object of this job."
    )
    attempts: int | None = Field(
        None,
        ge=0,
        description="Trainer pods started so far (1 + retries), preempted ones included.",
    )
    preemptions: int | None = Field(
        None,
        ge=0,
        description="Times the trainer was stopped by a disruption (Kueue preemption, "
        "suspension, eviction) rather than a failure; these never use up backoffLimit.",
    )
    last_preemption_time: datetime | None = Field(
        None, description="When the latest preemption or suspension stopped the trainer."
    )
    last_attempt_time: datetime | None = Field(
        None,
        description="Creation time of the newest trainer pod counted in attempts (so a pod "
        "deleted and replaced between two looks is still counted once).",
    )
    init_from: InitFromStatus | None = Field(
        None, description="The Checkpoint spec.initFrom resolved to."
    )
    selected_checkpoint: SelectedCheckpoint | None = Field(
        None, description="The Checkpoint spec.promote chose (select: best) and why."
    )


class TrainerJob(Resource):
    """A fine-tuning run (SFT, DPO or RL) of a vision-language model on a TrainingShape.

    The operator turns it into a batch/v1 Job running the trainer; every saved snapshot becomes
    a Checkpoint."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            Rule(
                f"self.metadata.name.size() <= {JOB_NAME_MAX} && "
                f"self.metadata.name.matches('{JOB_NAME_RE}')",
                _JOB_NAME_MSG,
                field_path=".metadata.name",
            )
        )
    )
    KIND = KindInfo(
        kind="TrainerJob",
        plural="trainerjobs",
        short_names=("tj",),
        scope="Namespaced",
        printer_columns=(
            PrinterColumn("Phase", "string", ".status.phase", "Where the job is."),
            PrinterColumn("Mode", "string", ".spec.mode", "sft, dpo or rl."),
            PrinterColumn("Shape", "string", ".spec.shape", "TrainingShape it runs on."),
            PrinterColumn(
                "Progress", "integer", ".status.progress.percent", "Percent of steps done."
            ),
            PrinterColumn(
                "Checkpoint",
                "string",
                ".status.latestCheckpoint",
                "Newest Checkpoint object.",
            ),
            PrinterColumn(
                "Step", "integer", ".status.progress.step", "Optimizer steps done.", priority=1
            ),
            PrinterColumn(
                "Loss", "number", ".status.progress.loss", "Latest training loss.", priority=1
            ),
            AGE_COLUMN,
        ),
    )

    kind: Literal["TrainerJob"] = "TrainerJob"
    spec: TrainerJobSpec = Field(..., description="What to train, on what, and how.")
    status: TrainerJobStatus | None = Field(
        None, description="Observed state, written by the operator and the trainer."
    )

    @model_validator(mode="after")
    def _name(self) -> TrainerJob:
        name = self.metadata.name
        if name is not None and (len(name) > JOB_NAME_MAX or not re.match(JOB_NAME_RE, name)):
            raise ValueError(_JOB_NAME_MSG)
        return self


# --- what CEL cannot check ------------------------------------------------------------------------


def max_seq_len(spec: TrainerJobSpec, shape: TrainingShapeSpec) -> int:
    """The sequence length the trainer gets: the job's maxSeqLen or the shape's maxContext."""
    return spec.hyperparameters.max_seq_len or shape.max_context


def shape_violations(spec: TrainerJobSpec, shape: TrainingShapeSpec, shape_name: str) -> list[str]:
    """Rules between a job and its shape, which CEL cannot see (another object).

    Returns one message per violation, each naming the job's field; empty when the job fits.
    The operator reports them as ``Admitted=False`` / ``Failed`` with reason ``InvalidSpec``."""
    problems = []
    hp = spec.hyperparameters
    if spec.mode not in shape.modes:
        allowed = ", ".join(str(m) for m in shape.modes)
        problems.append(
            f"spec.mode: {spec.mode} is not allowed by TrainingShape {shape_name} "
            f"(modes: {allowed})"
        )
    if hp.lora_rank > shape.max_lora_rank:
        problems.append(
            f"spec.hyperparameters.loraRank: {hp.lora_rank} exceeds TrainingShape {shape_name}'s "
            f"maxLoraRank {shape.max_lora_rank}"
        )
    if hp.lora_rank == 0 and not shape.allow_full_fine_tune:
        problems.append(
            "spec.hyperparameters.loraRank: 0 (full fine-tune) is not allowed by TrainingShape "
            f"{shape_name} (allowFullFineTune: false); set a LoRA rank"
        )
    if hp.max_seq_len is not None and hp.max_seq_len > shape.max_context:
        problems.append(
            f"spec.hyperparameters.maxSeqLen: {hp.max_seq_len} exceeds TrainingShape "
            f"{shape_name}'s maxContext {shape.max_context}"
        )
    problems += limit_violations(spec.data_limits, shape.data_limits, shape_name)
    return problems + policy_violations(spec.pod_overrides, shape.pod_policy, shape_name)
