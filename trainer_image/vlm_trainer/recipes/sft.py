"""SFT recipe: ``Config`` + ``main(cfg)``; setup -> train loop -> save.

Supported: full fine-tuning or LoRA (``lora_rank > 0``, peft) of an ``AutoModelForImageTextToText``
model (Qwen2-VL / Qwen2.5-VL / Qwen3-VL) on ``{"messages": [...]}`` JSONL with base64 images;
AdamW with warmup then cosine / linear / constant decay; gradient accumulation; gradient
clipping; optional gradient checkpointing and frozen vision tower; bf16 weights on GPU, fp32
on CPU; one process, one device.

Assumed and guaranteed:

- The whole dataset (and eval set) is validated and rendered once before the model is loaded
  (``validate_before_training``): a bad line fails the run with the validator's messages and
  no checkpoint is written.
- ``batch_size`` is sequences per forward pass; one optimizer step consumes
  ``batch_size * gradient_accumulation_steps`` records (the last step of an epoch may have
  fewer). The loss is the summed weighted token cross-entropy of the whole accumulated batch
  divided by its number of weighted tokens (see ``losses.py``).
- Deterministic on CPU for a given seed and thread count; exact resume: a run restarted from a
  ``step-*`` checkpoint ends with bit-identical weights to one that was never interrupted
  (weights, optimizer, scheduler, RNG and data position are all restored).
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..config import ConfigError, SFTConfig, local_path
from ..data.collate import collate, model_inputs
from ..data.render import Renderer
from ..data.stream import RecordStream
from ..data.validate import validate_file
from ..losses import num_target_tokens, sft_loss, weighted_ce_sum, weighted_token_accuracy
from ..model import (
    apply_lora,
    count_parameters,
    freeze_vision,
    load_model,
    load_processor,
    pick_device,
    pick_dtype,
    quiet_transformers,
)
from ..report import MultiReporter, build_reporter

Config = SFTConfig


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class SFTRecipe:
    """One SFT run. ``setup()`` returns False when a verified ``final`` checkpoint already
    exists (a restarted pod of a finished job): there is nothing left to do."""

    mode = "sft"

    def __init__(self, cfg: SFTConfig, reporter: MultiReporter | None = None):
        self.cfg = cfg
        self.reporter = reporter or build_reporter(cfg.log_dir)
        self.root = cfg.checkpoints_path
        self.step = self.epoch = self.cursor = 0
        self.resumed_from: Path | None = None
        self.last_metrics: dict = {}

    # ---------------------------------------------------------------------------------- setup
    def setup(self) -> bool:
        cfg = self.cfg
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # Every rank would train alone and write the same checkpoints: refuse clearly.
            raise ConfigError(
                "distributed (torchrun, WORLD_SIZE > 1) training is not supported "
                "yet: run one process with one device"
            )
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        quiet_transformers()
        self.device, self.dtype = pick_device(cfg), pick_dtype(cfg, pick_device(cfg))

        processor = load_processor(cfg.processor_path)
        self.renderer = Renderer(
            processor, cfg.max_seq_len, cfg.train_on, cfg.on_truncation, cfg.max_image_pixels
        )
        self.data_path = local_path(cfg.dataset)
        self.eval_path = local_path(cfg.eval_dataset) if cfg.eval_dataset else None
        trainable = self._validate_data()
        self.stream = RecordStream(self.data_path, self.renderer, seed=cfg.seed)
        if trainable is None:
            trainable = len(self.stream)

        ckpt.clean_temp(self.root)
        final = self.root / ckpt.FINAL
        if final.exists() and ckpt.verify(final) is None:
            self.final_path = final
            return False
        self.resumed_from = ckpt.latest_verified(self.root, log=self._log)

        self._seed_everything()
        self.model = self._build_model()
        self.optimizer = self._build_optimizer()
        per_step = cfg.batch_size * cfg.gradient_accumulation_steps
        self.steps_per_epoch = max(1, math.ceil(trainable / per_step))
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(
                s, self.total_steps, cfg.warmup_steps, cfg.lr_schedule, cfg.min_lr_ratio
            ),
        )
        if self.resumed_from is not None:
            self._restore(self.resumed_from)
        return True

    def _validate_data(self) -> int | None:
        """Check every line first; raise ``DataInvalidError`` with all bad lines. Returns the
        number of trainable records (None when validation is disabled)."""
        if not self.cfg.validate_before_training:
            return None
        trainable = None
        for path in (self.data_path, self.eval_path):
            if path is None:
                continue
            summary = validate_file(path, "sft", self.renderer)
            summary.raise_if_invalid()
            if trainable is None:
                trainable = summary.trainable
                self.data_summary = summary.as_dict()
        if trainable == 0:
            raise ConfigError(f"{self.data_path}: every record is longer than max_seq_len")
        return trainable

    def _seed_everything(self) -> None:
        seed = self.cfg.seed
        random.seed(seed)
        torch.manual_seed(seed)
        try:
            import numpy as np

            np.random.seed(seed)
        except ImportError:
            pass

    def _build_model(self):
        cfg = self.cfg
        full_resume = self.resumed_from is not None and cfg.lora_rank == 0
        # A full fine-tune resumes from the checkpoint's own weights; LoRA rebuilds the base
        # and loads the adapter weights in _restore.
        model = load_model(
            self.resumed_from if full_resume else cfg.base_model, self.dtype, self.device
        )
        model.config.use_cache = False
        if cfg.lora_rank:
            model = apply_lora(model, cfg)
        if cfg.freeze_vision:
            freeze_vision(model)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model.train()
        return model

    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        # No weight decay on biases and norm scales (1-D tensors), as usual for transformers.
        groups = [
            {"params": [p for _, p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(
            [g for g in groups if g["params"]],
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_eps,
        )

    def _restore(self, path: Path) -> None:
        cfg = self.cfg
        manifest = ckpt.read_manifest(path) or {}
        want = "lora" if cfg.lora_rank else "full"
        if manifest.get("type") != want or manifest.get("lora_rank", 0) != cfg.lora_rank:
            raise ConfigError(
                f"{path}: written with type={manifest.get('type')} lora_rank="
                f"{manifest.get('lora_rank')}, but this run has lora_rank={cfg.lora_rank}"
            )
        if cfg.lora_rank:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(self.model, load_file(path / "adapter_model.safetensors"))
        progress, state = ckpt.load_trainer_state(path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        self.step, self.epoch, self.cursor = progress["step"], progress["epoch"], progress["cursor"]
        self.stream.skipped = progress.get("skipped_records", 0)
        self._log(
            f"resumed from {path} at step {self.step} (epoch {self.epoch}, record "
            f"{self.cursor} of {len(self.stream)})"
        )

    # ---------------------------------------------------------------------------------- train
    def train(self) -> None:
        cfg = self.cfg
        trainable, total = count_parameters(self.model)
        self.reporter.on_start(
            {
                "mode": self.mode,
                "job": cfg.job_name,
                "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch,
                "epochs": cfg.epochs,
                "resumed_step": self.step if self.resumed_from else None,
                "resumed_from": str(self.resumed_from) if self.resumed_from else None,
                "records": len(self.stream),
                "trainable_parameters": trainable,
                "total_parameters": total,
                "device": str(self.device),
                "dtype": str(self.dtype),
            }
        )
        while self.step < self.total_steps and self.epoch < cfg.epochs:
            samples = self.stream.samples(self.epoch, self.cursor)
            while self.step < self.total_steps:
                t0 = time.perf_counter()
                micro = self._next_batches(samples)
                if not micro:
                    break
                metrics = self._optimizer_step(micro, t0)
                self.reporter.on_step(metrics)
                self.last_metrics = metrics
                if (
                    cfg.save_every_steps
                    and self.step % cfg.save_every_steps == 0
                    and self.step < self.total_steps
                ):
                    self.save_checkpoint(ckpt.step_name(self.step))
            else:
                break  # reached total_steps inside the epoch
            self.epoch, self.cursor = self.epoch + 1, 0

    def _next_batches(self, samples) -> list[dict]:
        """Collated micro-batches for one optimizer step (empty at the end of the epoch)."""
        cfg, r = self.cfg, self.renderer
        micro, current = [], []
        for cursor, sample in samples:
            self.cursor = cursor
            current.append(sample)
            if len(current) == cfg.batch_size:
                micro.append(collate(current, r.pad_token_id, r.image_token_id))
                current = []
                if len(micro) == cfg.gradient_accumulation_steps:
                    return micro
        if current:
            micro.append(collate(current, r.pad_token_id, r.image_token_id))
        return micro

    def _optimizer_step(self, micro: list[dict], t0: float) -> dict:
        """Forward/backward every micro-batch, clip, step. ``t0`` is when reading the data for
        this step began, so ``tokens_per_second`` covers data and compute."""
        cfg = self.cfg
        t_data = time.perf_counter() - t0
        denom = sum(num_target_tokens(b["weights"]) for b in micro)
        loss_total = torch.zeros((), device=self.device)
        tokens = samples = 0
        for batch in micro:
            inputs = model_inputs(batch, self.device)
            logits = self.model(**inputs).logits
            loss = sft_loss(logits, inputs["input_ids"], batch["weights"].to(self.device), denom)
            loss.backward()
            loss_total += loss.detach()
            tokens += int(batch["attention_mask"].sum())
            samples += batch["input_ids"].shape[0]
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = cfg.grad_clip_norm if cfg.grad_clip_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        dt = time.perf_counter() - t0
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": round(self.epoch + self.cursor / max(1, len(self.stream)), 4),
            "loss": float(loss_total),
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": tokens,
            "target_tokens": int(denom),
            "samples": samples,
            "tokens_per_second": round(tokens / dt, 1),
            "step_time_s": round(dt, 4),
            "data_time_s": round(t_data, 4),
            "skipped_records": self.stream.skipped,
        }

    # ----------------------------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Teacher-forced loss and next-token accuracy on the assistant tokens of the eval set."""
        if self.eval_path is None:
            return {}
        self.model.eval()
        stream = RecordStream(self.eval_path, self.renderer, seed=0, shuffle=False)
        ce = weight = 0.0
        correct = count = 0
        batch: list = []
        r = self.renderer

        def run(batch):
            nonlocal ce, weight, correct, count
            b = collate(batch, r.pad_token_id, r.image_token_id)
            inputs = model_inputs(b, self.device)
            logits = self.model(**inputs).logits
            w = b["weights"].to(self.device)
            s, n = weighted_ce_sum(logits, inputs["input_ids"], w)
            c, k = weighted_token_accuracy(logits, inputs["input_ids"], w)
            ce, weight, correct, count = ce + float(s), weight + float(n), correct + c, count + k

        for _, sample in stream.samples(0):
            batch.append(sample)
            if len(batch) == self.cfg.batch_size:
                run(batch)
                batch = []
        if batch:
            run(batch)
        self.model.train()
        metrics = {
            "step": self.step,
            "eval_loss": ce / max(weight, 1.0),
            "eval_token_accuracy": correct / max(count, 1),
            "eval_records": len(stream),
        }
        self.reporter.on_eval(metrics)
        return metrics

    # ----------------------------------------------------------------------------------- save
    def save_checkpoint(self, name: str, final: bool = False, metrics: dict | None = None) -> Path:
        cfg = self.cfg
        progress = {
            "step": self.step,
            "epoch": self.epoch,
            "cursor": self.cursor,
            "total_steps": self.total_steps,
            "skipped_records": self.stream.skipped,
            "records": len(self.stream),
            "seed": cfg.seed,
        }

        def write(out: Path) -> None:
            self.model.save_pretrained(out)
            self.renderer.processor.save_pretrained(out)
            if final:  # a finished run needs no optimizer state
                ckpt.save_trainer_state(out, progress)
            else:
                ckpt.save_trainer_state(out, progress, self.optimizer, self.scheduler)

        manifest = {
            "job": cfg.job_name,
            "mode": self.mode,
            "type": "lora" if cfg.lora_rank else "full",
            "lora_rank": cfg.lora_rank,
            "base_model": cfg.base_model,
            "metrics": {
                k: v
                for k, v in {**self.last_metrics, **(metrics or {})}.items()
                if isinstance(v, int | float)
            },
        }
        path, manifest = ckpt.write_checkpoint(self.root, name, write, manifest, self.step)
        self.reporter.on_checkpoint(path, self.step, manifest)
        ckpt.prune(self.root, cfg.keep_last)
        return path

    def _log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)


def main(cfg: SFTConfig, reporter: MultiReporter | None = None) -> dict:
    """Run SFT to completion (or resume it); returns a summary with the final checkpoint path."""
    recipe = SFTRecipe(cfg, reporter)
    try:
        if not recipe.setup():
            summary = {"final_checkpoint": str(recipe.final_path), "already_complete": True}
            recipe.reporter.on_done(summary)
            return summary
        recipe.train()
        eval_metrics = recipe.evaluate()
        path = recipe.save_checkpoint(ckpt.FINAL, final=True, metrics=eval_metrics)
    except Exception as e:
        recipe.reporter.on_error(f"{type(e).__name__}: {e}")
        raise
    summary = {
        "final_checkpoint": str(path),
        "steps": recipe.step,
        "loss": recipe.last_metrics.get("loss"),
        **eval_metrics,
    }
    recipe.reporter.on_done(summary)
    return summary
