"""The trainer's config file, rendered from a TrainerJob and its TrainingShape.

Keys are the trainer's own (`vlm_trainer.config`, cookbook names). The rendered dict is validated
with the trainer's config class for the mode when that class exists, so a mismatch between the
operator and the trainer is an `InvalidSpec` before any pod runs, never a crash inside one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlm_operator.api import TrainerJob, TrainingShape
from vlm_operator.api.data_limits import effective_limits
from vlm_operator.builders.storage import StorageMounts, join_uri

CONFIG_KEY = "config.yaml"
CONFIG_DIR = "/etc/vlm-trainer"


def checkpoint_location(tj: TrainerJob, default_storage: str) -> str:
    """`<storage>/<namespace>/<job>-<uid>`: the URI of the job's log and checkpoint folder.

    The UID makes it this job's alone: a TrainerJob deleted and created again under the same
    name gets a new, empty folder (names are reused, UIDs are not). Without a UID (a job
    rendered offline, never stored by the apiserver) the folder is `<job>`."""
    base = tj.spec.checkpointing.storage or default_storage
    folder = f"{tj.metadata.name}-{tj.metadata.uid}" if tj.metadata.uid else tj.metadata.name
    return join_uri(base, tj.metadata.namespace or "default", folder)


@dataclass(frozen=True)
class InitWeights:
    """Where a job with spec.initFrom starts: the model folder the trainer loads as its base,
    and a LoRA adapter merged into it at load (a LoRA Checkpoint), if any."""

    base_model: str
    adapter: str | None = None


def trainer_config(
    tj: TrainerJob,
    shape: TrainingShape,
    default_storage: str,
    mounts: StorageMounts,
    init: InitWeights | None = None,
) -> dict[str, Any]:
    spec, hp, sh = tj.spec, tj.spec.hyperparameters, shape.spec
    cfg: dict[str, Any] = {
        "job_name": tj.metadata.name,
        **({"job_uid": tj.metadata.uid} if tj.metadata.uid else {}),
        "base_model": mounts.path(init.base_model if init else sh.base_model),
        "dataset": mounts.path(spec.dataset.uri),
        "log_path": mounts.path(checkpoint_location(tj, default_storage), writable=True),
        "max_seq_len": hp.max_seq_len or sh.max_context,
        "on_truncation": str(hp.on_truncation),
        "train_on": str(hp.train_on),
        "epochs": hp.epochs,
        "batch_size": hp.batch_size,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "learning_rate": hp.learning_rate,
        "lr_schedule": str(hp.lr_schedule),
        "min_lr_ratio": hp.min_lr_ratio,
        "warmup_steps": hp.warmup_steps,
        "weight_decay": hp.weight_decay,
        "adam_beta1": hp.adam_beta1,
        "adam_beta2": hp.adam_beta2,
        "adam_eps": hp.adam_eps,
        "grad_clip_norm": hp.grad_clip_norm,
        "lora_rank": hp.lora_rank,
        "lora_dropout": hp.lora_dropout,
        "freeze_vision": hp.freeze_vision,
        "gradient_checkpointing": hp.gradient_checkpointing,
        "seed": hp.seed,
        "save_every_steps": spec.checkpointing.every_steps,
        "keep_last": spec.checkpointing.keep_last,
        "precision": str(sh.precision),
    }
    # The shape's processor: an initFrom source carries a copy of the same one (checked at
    # admission), so the shape's stays the single answer.
    cfg["tokenizer_model"] = mounts.path(sh.processor or sh.base_model)
    if init and init.adapter:
        cfg["init_adapter"] = mounts.path(init.adapter)
    if spec.eval_dataset:
        cfg["eval_dataset"] = mounts.path(spec.eval_dataset.uri)
    if hp.max_steps is not None:
        cfg["max_steps"] = hp.max_steps
    if hp.lora_alpha is not None:
        cfg["lora_alpha"] = hp.lora_alpha
    if spec.promote and spec.promote.select == "best":  # keepLast must not prune the best
        cfg |= {"keep_best_metric": spec.promote.metric, "keep_best_mode": str(spec.promote.mode)}
    if hp.tokens_per_batch is not None:
        cfg["tokens_per_batch"] = hp.tokens_per_batch
    # Per-line data limits: the job's, else its shape's (admission checked the bounds).
    cfg |= effective_limits(spec.data_limits, sh.data_limits)
    if hp.dpo is not None:
        cfg |= {
            "beta": hp.dpo.beta,
            "dpo_loss": str(hp.dpo.loss_type),
            "cache_reference_logprobs": hp.dpo.cache_reference_logprobs,
        }
    if hp.rl is not None:
        rl = hp.rl
        cfg |= {
            "completions_per_prompt": rl.completions_per_prompt,
            "max_completion_tokens": rl.max_completion_tokens,
            "temperature": rl.temperature,
            "top_p": rl.top_p,
            "kl_beta": rl.kl_beta,
            "eps_clip": rl.eps_clip,
            "reward": rl.reward,
        }
        if rl.eps_clip_high is not None:
            cfg["eps_clip_high"] = rl.eps_clip_high
    return cfg


def validate_for_trainer(mode: str, cfg: dict[str, Any]) -> str | None:
    """The trainer's own verdict on the rendered config: None when valid, else the message.

    Modes whose recipe the installed trainer does not have yet are not checked here; the
    trainer checks them itself when the pod starts."""
    from vlm_trainer import config as trainer_config_module

    cls = getattr(trainer_config_module, f"{mode.upper()}Config", None)
    if cls is None:
        return None
    try:
        cls.model_validate(cfg)
    except Exception as e:  # pydantic.ValidationError, kept generic: the message is what matters
        return str(e)
    return None
