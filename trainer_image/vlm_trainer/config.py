"""Trainer configuration: pydantic models, YAML loading and ``key=value`` overrides.

This module must stay importable without torch: the operator imports it to render the trainer's
ConfigMap and to validate hyperparameters. Only the standard library, pydantic and PyYAML.

Key names follow the cookbook names users already know (``base_model``, ``dataset``,
``learning_rate``, ``lora_rank`` ...). ``SFTConfig`` is the SFT recipe's config; DPO and RL
configs subclass ``TrainConfig`` the same way and add their own keys. Unknown keys are errors, so
a typo (``learning_rte``) fails before any work is done.

Paths may be plain paths or ``file://`` URIs; ``local_path`` turns either into a ``Path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import unquote, urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

#: Where the operator mounts the rendered config inside the trainer pod.
DEFAULT_CONFIG_PATH = "/etc/vlm-trainer/config.yaml"


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


class TrainConfig(BaseModel):
    """Keys shared by every training mode (SFT, DPO, RL)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # What to train and on what.
    job_name: str = Field("vlm-trainer", description="Recorded in every checkpoint manifest.")
    job_uid: str | None = Field(
        None,
        description="The TrainerJob's UID, recorded in every manifest; a run never resumes "
        "from or finishes on a checkpoint whose manifest names another UID.",
    )
    base_model: str = Field(..., description="Local path or hub id of an HF image-text model.")
    tokenizer_model: str | None = Field(
        None, description="Processor/tokenizer path or hub id; defaults to base_model."
    )
    init_adapter: str | None = Field(
        None,
        description="A LoRA checkpoint folder merged into base_model before training starts "
        "(start from an earlier LoRA run's result; the operator's spec.initFrom).",
    )
    dataset: str = Field(..., description="JSONL path or file:// URI.")
    eval_dataset: str | None = None
    log_path: str = Field(..., description="metrics.jsonl goes here, and checkpoints/ by default.")
    checkpoint_dir: str | None = Field(
        None, description="Where checkpoints go; defaults to <log_path>/checkpoints."
    )

    # Sequence handling.
    max_seq_len: int = Field(4096, ge=16)
    train_on: Literal["all_assistant", "last_assistant"] = "all_assistant"
    on_truncation: Literal["skip", "error"] = Field(
        "skip",
        description="What to do with a record whose truncation would cut an image span or leave "
        "no assistant token: skip it (counted) or fail before training.",
    )
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="Images with more pixels are rejected (decompression bombs)."
    )
    # What one dataset line may cost (data/limits.py); a breach is a bad line, not a crash.
    max_line_bytes: int = Field(32 << 20, ge=1024, description="Longest JSONL line, in bytes.")
    max_json_depth: int = Field(32, ge=8, description="Deepest nesting of JSON objects/lists.")
    max_json_int_digits: int = Field(100, ge=1, description="Longest JSON integer, in digits.")
    max_images_per_record: int = Field(64, ge=1)
    max_record_pixels: int = Field(
        100_000_000, ge=1, description="All images of one record together, from their headers."
    )

    # Optimisation.
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(4, ge=1, description="Sequences per forward pass (micro-batch).")
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(1e-5, gt=0)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final lr as a fraction of peak.")
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_eps: float = Field(1e-8, gt=0)
    grad_clip_norm: float = Field(1.0, ge=0, description="0 disables clipping.")

    # What is trainable.
    lora_rank: int = Field(0, ge=0, description="0 = full fine-tune.")
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        description="Linear layers of the language model that get adapters.",
    )
    freeze_vision: bool = False
    gradient_checkpointing: bool = False
    loss_kernel: Literal["torch", "liger"] = Field(
        "torch",
        description="SFT loss: torch = chunked_loss.py (any device); liger = Liger Kernel's "
        "fused linear cross-entropy (CUDA and the gpu extra only; see liger.py).",
    )

    # Checkpoints and runtime.
    save_every_steps: int = Field(0, ge=0, description="0 = only the final checkpoint.")
    keep_last: int = Field(3, ge=0, description="step-* checkpoints kept; 0 = keep all.")
    keep_best_metric: str | None = Field(
        None,
        description="Also keep the step-* checkpoint with the best value of this eval metric "
        "(the operator's promote.select: best), whatever keep_last says.",
    )
    keep_best_mode: Literal["min", "max"] = "min"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 on GPU, fp32 on CPU."
    )
    num_threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch's default.")
    validate_before_training: bool = Field(
        True, description="Read and render the whole dataset once before training starts."
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.warmup_steps and self.max_steps and self.warmup_steps > self.max_steps:
            raise ValueError("warmup_steps must not exceed max_steps")
        return self

    # Derived locations -------------------------------------------------------------------------
    @property
    def processor_path(self) -> str:
        return self.tokenizer_model or self.base_model

    @property
    def checkpoints_path(self) -> Path:
        return (
            local_path(self.checkpoint_dir) if self.checkpoint_dir else self.log_dir / "checkpoints"
        )

    @property
    def log_dir(self) -> Path:
        return local_path(self.log_path)


class SFTConfig(TrainConfig):
    """Supervised fine-tuning. ``tokens_per_batch`` > 0 switches from padded micro-batches of
    ``batch_size`` sequences to padding-free packed ones (``data/packing.py``)."""

    mode: Literal["sft"] = "sft"
    tokens_per_batch: int = Field(
        0,
        ge=0,
        description="0 = micro-batches of batch_size padded sequences. Else pack whole samples "
        "without padding into micro-batches of at most this many tokens (batch_size is then "
        "unused); must be at least max_seq_len.",
    )

    data_workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Processes that read, decode and render training records ahead of the "
        "training step (DataLoader workers); 0 = in the training process.",
    )

    @model_validator(mode="after")
    def _check_packing(self) -> SFTConfig:
        if self.tokens_per_batch and self.tokens_per_batch < self.max_seq_len:
            raise ValueError(
                f"tokens_per_batch ({self.tokens_per_batch}) must be at least max_seq_len "
                f"({self.max_seq_len}): every sample must fit in one micro-batch"
            )
        if self.tokens_per_batch and not self.validate_before_training:
            raise ValueError(
                "tokens_per_batch needs validate_before_training: the number of packed steps "
                "comes from the rendered lengths"
            )
        return self


class DPOConfig(TrainConfig):
    """Direct preference optimisation on ``{"chosen": ..., "rejected": ...}`` records.

    ``batch_size`` counts *pairs* per forward pass (each pass holds 2 x batch_size sequences).
    Defaults match the operator's ``hyperparameters.dpo``."""

    mode: Literal["dpo"] = "dpo"
    beta: float = Field(0.1, gt=0, le=100, description="Strength of the implicit KL constraint.")
    dpo_loss: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    cache_reference_logprobs: bool = Field(
        False,
        description="Compute the reference log-probs once in a first pass and free the "
        "reference model, instead of a reference forward pass every step.",
    )


#: A built-in reward name or ``module:function`` (same pattern as the operator's API).
REWARD_PATTERN = r"^([a-z][a-z0-9_]*|[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*)$"


class RLConfig(TrainConfig):
    """Reinforcement learning (GRPO-style group advantages, token-level PPO-clip loss).

    ``batch_size`` counts *prompts* per micro-batch; each prompt gets
    ``completions_per_prompt`` rollouts, so a forward pass holds up to
    batch_size x completions_per_prompt sequences. Defaults match the operator's
    ``hyperparameters.rl``."""

    mode: Literal["rl"] = "rl"
    completions_per_prompt: int = Field(8, ge=2, le=256, description="GRPO group size.")
    max_completion_tokens: int = Field(256, ge=1, le=131_072)
    temperature: float = Field(1.0, gt=0, le=10, description="Rollout sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1)
    kl_beta: float = Field(
        0.0, ge=0, le=100, description="k3 KL penalty weight; 0 = no reference model."
    )
    eps_clip: float = Field(0.2, gt=0, le=10, description="PPO clip range below (and above) 1.")
    eps_clip_high: float | None = Field(
        None, gt=0, le=10, description="Upper clip range ('clip higher'); default eps_clip."
    )
    reward: str = Field(
        "exact_match",
        pattern=REWARD_PATTERN,
        description="exact_match | regex_match | numeric_match | format_check | module:function",
    )
    eval_max_prompts: int = Field(
        256, ge=1, description="Evaluate greedy rewards on at most this many eval prompts."
    )

    @model_validator(mode="after")
    def _check_clip(self) -> RLConfig:
        if self.eps_clip_high is not None and self.eps_clip_high < self.eps_clip:
            raise ValueError("eps_clip_high must be at least eps_clip")
        return self


C = TypeVar("C", bound=BaseModel)


def local_path(uri: str) -> Path:
    """``file:///data/x.jsonl`` or ``/data/x.jsonl`` -> ``Path('/data/x.jsonl')``.

    Other schemes are refused: the trainer never fetches data over the network."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path) if parsed.scheme else uri)
    if len(parsed.scheme) == 1:  # a Windows drive letter, not a scheme
        return Path(uri)
    raise ConfigError(f"{uri!r}: only local paths and file:// URIs are supported")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["epochs=3", "lora_rank=8"]`` -> ``{"epochs": 3, "lora_rank": 8}``; values are YAML."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r}: expected key=value")
        out[key.strip()] = yaml.safe_load(value) if value != "" else None
    return out


def load_config(cls: type[C], path: str | Path | None, overrides: list[str] = ()) -> C:
    """Read a YAML config (or nothing), apply ``key=value`` overrides, validate as ``cls``."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f)
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values")
        data.update(loaded or {})
    data.update(parse_overrides(list(overrides)))
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, path)) from e


def format_validation_error(e: ValidationError, source: str | Path | None = None) -> str:
    """One line per problem: ``cfg.yaml: learning_rate: Input should be greater than 0``."""
    prefix = f"{source}: " if source else ""
    lines = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(config)"
        lines.append(f"{prefix}{key}: {err['msg']}")
    return "\n".join(lines)
