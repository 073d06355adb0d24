"""What every training recipe shares: runtime, model, optimizer, schedule, loop, checkpoints.

A recipe subclasses ``Recipe`` and provides the mode-specific parts:

- ``setup()``: call ``prepare_runtime()``, build ``self.renderer`` / validate the data /
  build ``self.stream`` (anything with ``samples(epoch, cursor)`` yielding
  ``(cursor_after, sample)`` and ``skipped``), then ``find_resume_point()`` and
  ``build_training_state(records_per_epoch)``;
- ``next_batches(samples)``: the micro-batches of one optimizer step (empty at epoch end);
- ``train_step(micro, t0)``: forward/backward of those micro-batches, then
  ``self.optimizer_step()``; returns the step's metrics;
- ``evaluate()`` (optional): eval metrics, reported and stored in the final manifest.

The base class guarantees exact resume: weights (full model, or the LoRA adapter on top of the
rebuilt base), optimizer, scheduler, every RNG and the data position ``(epoch, cursor)`` are
saved in each ``step-*`` checkpoint and restored from the newest one that verifies. The
learning rate follows ``lr_factor``: linear warmup, then cosine / linear decay to
``min_lr_ratio`` of the peak, or constant.
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
from ..config import ConfigError, TrainConfig
from ..data.render import Renderer
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


class Recipe:
    """One training run. ``setup()`` returns False when a verified ``final`` checkpoint already
    exists (a restarted pod of a finished job): there is nothing left to do."""

    mode = "base"

    def __init__(self, cfg: TrainConfig, reporter: MultiReporter | None = None):
        self.cfg = cfg
        self.reporter = reporter or build_reporter(cfg.log_dir)
        self.root = cfg.checkpoints_path
        self.step = self.epoch = self.cursor = 0
        self.resumed_from: Path | None = None
        self.final_path: Path | None = None
        self.last_metrics: dict = {}

    # -- to implement ------------------------------------------------------------------------
    def setup(self) -> bool:
        raise NotImplementedError

    def next_batches(self, samples) -> list:
        raise NotImplementedError

    def train_step(self, micro: list, t0: float) -> dict:
        raise NotImplementedError

    def evaluate(self) -> dict:
        return {}

    # -- setup pieces --------------------------------------------------------------------------
    def prepare_runtime(self) -> None:
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
        self.device = pick_device(cfg)
        self.dtype = pick_dtype(cfg, self.device)
        self.renderer = Renderer(
            load_processor(cfg.processor_path),
            cfg.max_seq_len,
            cfg.train_on,
            cfg.on_truncation,
            cfg.max_image_pixels,
        )

    def find_resume_point(self) -> bool:
        """Drop interrupted writes; False if the run is already complete, else remember the
        newest verified ``step-*`` checkpoint (if any) in ``self.resumed_from``."""
        ckpt.clean_temp(self.root)
        final = self.root / ckpt.FINAL
        if final.exists() and ckpt.verify(final) is None:
            self.final_path = final
            return False
        self.resumed_from = ckpt.latest_verified(self.root, log=self.log)
        return True

    def build_training_state(self, records_per_epoch: int) -> None:
        """Model, optimizer and schedule; then, when resuming, every saved state."""
        cfg = self.cfg
        self._seed_everything()
        self.model = self._build_model()
        self.optimizer = self._build_optimizer()
        per_step = cfg.batch_size * cfg.gradient_accumulation_steps
        self.steps_per_epoch = max(1, math.ceil(records_per_epoch / per_step))
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
        # A full fine-tune resumes from the checkpoint's own weights; LoRA rebuilds the base
        # and loads the adapter weights in _restore.
        full_resume = self.resumed_from is not None and cfg.lora_rank == 0
        source = self.resumed_from if full_resume else cfg.base_model
        model = load_model(source, self.dtype, self.device)
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
        params = [p for p in self.model.parameters() if p.requires_grad]
        # No weight decay on biases and norm scales (1-D tensors), as usual for transformers.
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
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
        self.log(
            f"resumed from {path} at step {self.step} (epoch {self.epoch}, record "
            f"{self.cursor} of {len(self.stream)})"
        )

    # -- loop ----------------------------------------------------------------------------------
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
                micro = self.next_batches(samples)
                if not micro:
                    break
                metrics = self.train_step(micro, t0)
                self.reporter.on_step(metrics)
                self.last_metrics = metrics
                every = cfg.save_every_steps
                if every and self.step % every == 0 and self.step < self.total_steps:
                    self.save_checkpoint(ckpt.step_name(self.step))
            else:
                break  # reached total_steps inside the epoch
            self.epoch, self.cursor = self.epoch + 1, 0

    def optimizer_step(self) -> tuple[float, float]:
        """Clip, step the optimizer and the schedule; returns ``(grad_norm, lr used)``."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        clip = self.cfg.grad_clip_norm
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return grad_norm, lr

    # -- checkpoints ---------------------------------------------------------------------------
    def progress(self) -> dict:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "cursor": self.cursor,
            "total_steps": self.total_steps,
            "skipped_records": self.stream.skipped,
            "records": len(self.stream),
            "seed": self.cfg.seed,
        }

    def save_checkpoint(self, name: str, final: bool = False, metrics: dict | None = None) -> Path:
        cfg = self.cfg
        progress = self.progress()

        def write(out: Path) -> None:
            self.model.save_pretrained(out)
            self.renderer.processor.save_pretrained(out)
            if final:  # a finished run needs no optimizer state
                ckpt.save_trainer_state(out, progress)
            else:
                ckpt.save_trainer_state(out, progress, self.optimizer, self.scheduler)

        numbers = {**self.last_metrics, **(metrics or {})}
        manifest = {
            "job": cfg.job_name,
            "mode": self.mode,
            "type": "lora" if cfg.lora_rank else "full",
            "lora_rank": cfg.lora_rank,
            "base_model": cfg.base_model,
            "metrics": {k: v for k, v in numbers.items() if isinstance(v, int | float)},
        }
        path, manifest = ckpt.write_checkpoint(self.root, name, write, manifest, self.step)
        self.reporter.on_checkpoint(path, self.step, manifest)
        ckpt.prune(self.root, cfg.keep_last)
        return path

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)


def run(recipe: Recipe) -> dict:
    """setup -> train -> evaluate -> final checkpoint, reporting errors; returns a summary."""
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
