"""What every training recipe shares: runtime, model, optimizer, schedule, loop, checkpoints.

A recipe subclasses ``Recipe`` and provides the mode-specific parts:

- ``setup()``: call ``prepare_runtime()``, build ``self.renderer`` / validate the data /
  build ``self.stream`` (anything with ``samples(epoch, cursor)`` yielding
  ``(cursor_after, sample)`` and ``skipped``), then ``find_resume_point()`` and
  ``build_training_state(records_per_epoch)``;
- ``next_batches(samples)``: the micro-batches of one optimizer step (empty at epoch end);
- ``train_step(micro, t0)``: forward/backward of those micro-batches, then
  ``self.optimizer_step()``; returns the step's metrics;
- ``evaluate()`` (optional): eval metrics, computed at every snapshot and at the end,
  reported and stored in the snapshot's manifest (``eval`` section, see ``selection.py``).

The base class guarantees exact resume: weights (full model, or the LoRA adapter on top of the
rebuilt base), optimizer, scheduler, every RNG and the data position ``(epoch, cursor)`` are
saved in each ``step-*`` checkpoint and restored from the newest one that verifies. SIGTERM
stops the run between optimizer steps with a snapshot at the step every rank reached
(``graceful.py``). The learning rate follows ``lr_factor``: linear warmup, then cosine /
linear decay to ``min_lr_ratio`` of the peak, or constant.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from .. import dist_checkpoint, distributed
from ..config import ConfigError, TrainConfig
from ..data.limits import DataLimits
from ..data.render import Renderer
from ..data.validate import validate_file
from ..graceful import StopFlag, Stopped
from ..model import (
    apply_lora,
    count_parameters,
    freeze_vision,
    load_model,
    load_processor,
    merge_adapter,
    pick_device,
    pick_dtype,
    quiet_transformers,
)
from ..report import MultiReporter, build_reporter
from ..selection import Direction, best_snapshot, eval_section


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
    #: The eval metric ``kubectl get ckpt`` shows, and whether lower or higher is better.
    headline_metric: tuple[str, Direction] = ("eval_loss", "min")

    def __init__(self, cfg: TrainConfig, reporter: MultiReporter | None = None):
        self.cfg = cfg
        # One process reports (metrics.jsonl, stdout, the TrainerJob): rank 0.
        if reporter is None:
            main = distributed.env_rank() == 0
            reporter = build_reporter(cfg.log_dir) if main else MultiReporter([])
        self.reporter = reporter
        self.dist = distributed.Dist()
        self.step_images = 0  # images in this step's global batch (see local_share)
        self.root = cfg.checkpoints_path
        self.step = self.epoch = self.cursor = 0
        self.resumed_from: Path | None = None
        self.final_path: Path | None = None
        self.last_metrics: dict = {}
        self.stop = StopFlag()  # SIGTERM sets it (run() installs the handler)
        self.saved_step = 0  # the step of the newest snapshot (written or resumed from)

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
    def validate_data(self) -> int | None:
        """Check every line of ``self.data_path`` and ``self.eval_path`` (when set) in this
        recipe's mode first; raise ``DataInvalidError`` with all bad lines. Returns the number
        of trainable training records (None when validation is disabled)."""
        if not self.cfg.validate_before_training:
            return None
        trainable = None
        for path in (self.data_path, getattr(self, "eval_path", None)):
            if path is None:
                continue
            # RL: every prompt must carry what the reward compares against (rewards.requires).
            reward = getattr(self, "reward_fn", None)
            summary = validate_file(path, self.mode, self.renderer, reward=reward)
            summary.raise_if_invalid()
            if trainable is None:
                trainable = summary.trainable
                self.data_summary = summary.as_dict()
        if trainable == 0:
            raise ConfigError(f"{self.data_path}: every record is longer than max_seq_len")
        return trainable

    def prepare_runtime(self) -> None:
        cfg = self.cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        quiet_transformers()
        # Under torchrun: join the process group (cuda:LOCAL_RANK on GPUs); else a no-op.
        self.dist = distributed.init(pick_device(cfg))
        self.device = self.dist.device
        self.dtype = pick_dtype(cfg, self.device)
        self.renderer = Renderer(
            load_processor(cfg.processor_path),
            cfg.max_seq_len,
            cfg.train_on,
            cfg.on_truncation,
            cfg.max_image_pixels,
            DataLimits.from_config(cfg),
        )

    def find_resume_point(self) -> bool:
        """Drop interrupted writes; False if the run is already complete, else remember the
        newest verified ``step-*`` checkpoint (if any) in ``self.resumed_from``. Under several
        processes rank 0 looks and every rank takes its answer, so all resume from one place."""
        if self.dist.is_main:
            ckpt.clean_temp(self.root)
            final, uid = self.root / ckpt.FINAL, self.cfg.job_uid
            if final.exists() and ckpt.usable(final, uid) is None:
                self.final_path = final
            else:
                self.resumed_from = ckpt.latest_verified(self.root, log=self.log, job_uid=uid)
        self.final_path, self.resumed_from = self.dist.broadcast(
            (self.final_path, self.resumed_from)
        )
        return self.final_path is None

    def build_training_state(self, records_per_epoch: int) -> None:
        """Model, optimizer and schedule; then, when resuming, every saved state."""
        cfg = self.cfg
        self._seed_everything()
        self.model = self._build_model()
        # What training forwards run through: the model itself (one process, FSDP2 sharded in
        # place) or its DDP wrapper. Saving and evaluation keep using self.model.
        self.train_model = distributed.wrap(self.model, self.dist)
        self.optimizer = self._build_optimizer()
        self.steps_per_epoch, self.total_steps = self.count_steps(records_per_epoch)
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

    def count_steps(self, records_per_epoch: int) -> tuple[int, int]:
        """``(steps per epoch, steps of all epochs)`` before ``max_steps``; a recipe whose
        micro-batches are not ``batch_size`` records (packing) overrides this."""
        per_step = self.cfg.batch_size * self.cfg.gradient_accumulation_steps
        steps_per_epoch = max(1, math.ceil(records_per_epoch / per_step))
        return steps_per_epoch, steps_per_epoch * self.cfg.epochs

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
        if cfg.init_adapter and not full_resume:
            model = merge_adapter(model, cfg.init_adapter)
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

    # -- several processes ---------------------------------------------------------------------
    def local_share(self, samples: list) -> list:
        """This rank's share of one global micro-batch (``batch_size`` counts sequences over all
        ranks); one process: ``samples`` itself. Under several processes a share without an
        image gets a zero-weight dummy image, so every rank runs the vision tower every step
        (else DDP's reducer or FSDP's all-gathers would wait for a rank that skipped it)."""
        if not self.dist.is_distributed:
            return samples
        self.step_images += sum(self.has_image(s) for s in samples)  # global: same on all ranks
        mine = self.dist.share(samples, self.zero_weight)
        if not any(self.has_image(s) for s in mine):
            mine = [*mine, self.dummy_image_sample()]
        return mine

    def zero_weight(self, sample):
        """A copy of ``sample`` that trains nothing (a ``Rendered``; other sample types
        override this, ``has_image`` and ``dummy_image_sample``)."""
        return dataclasses.replace(sample, weights=torch.zeros_like(sample.weights))

    def has_image(self, sample) -> bool:
        return getattr(sample, "pixel_values", None) is not None

    def dummy_image_sample(self):
        """A one-image conversation with every weight 0, rendered once."""
        if getattr(self, "_dummy_image", None) is None:
            from PIL import Image

            from ..data.images import encode_data_url
            from ..data.jsonl import parse_line

            url = encode_data_url(Image.new("RGB", (32, 32)))
            image = {"type": "image_url", "image_url": {"url": url}}
            line = {
                "messages": [
                    {"role": "user", "content": [image]},
                    {"role": "assistant", "content": "."},
                ]
            }
            record, issues = parse_line(json.dumps(line), file="<dummy image>", line=1)
            assert record is not None, issues
            # Recipe's own hook: a subclass's zero_weight takes its own sample type (a pair).
            rendered = self.renderer.render(record.conversation)
            self._dummy_image = Recipe.zero_weight(self, rendered)
        return self._dummy_image

    def _restore(self, path: Path) -> None:
        cfg = self.cfg
        manifest = ckpt.read_manifest(path) or {}
        want = "lora" if cfg.lora_rank else "full"
        if manifest.get("type") != want or manifest.get("lora_rank", 0) != cfg.lora_rank:
            raise ConfigError(
                f"{path}: written with type={manifest.get('type')} lora_rank="
                f"{manifest.get('lora_rank')}, but this run has lora_rank={cfg.lora_rank}"
            )
        # Written by several processes: sharded state (DCP, re-sharded to this world size).
        sharded = dist_checkpoint.has_sharded_state(path)
        if not sharded:
            dist_checkpoint.check_single_process_resume(path, self.dist)
        if cfg.lora_rank and not sharded:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(self.model, load_file(path / "adapter_model.safetensors"))
        progress, state = ckpt.load_trainer_state(path)
        if sharded:
            args = (self.dist, self.model, self.optimizer, self.scheduler, self.log)
            dist_checkpoint.load_state(path, *args)
        else:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            ckpt.set_rng_state(state["rng"])
        self.step, self.epoch, self.cursor = progress["step"], progress["epoch"], progress["cursor"]
        self.saved_step = self.step
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
                if self.stop.agreed(self.dist):  # between optimizer steps, on every rank
                    self.stop_gracefully()
                t0 = time.perf_counter()
                micro = self.next_batches(samples)
                if not micro:
                    break
                metrics = self.train_step(micro, t0)
                self.reporter.on_step(metrics)
                self.last_metrics = metrics
                every = cfg.save_every_steps
                if every and self.step % every == 0 and self.step < self.total_steps:
                    # Every snapshot is evaluated (when there is an eval set), so snapshots
                    # can be compared and the best one promoted (selection.py).
                    self.save_checkpoint(ckpt.step_name(self.step), metrics=self.evaluate())
            else:
                break  # reached total_steps inside the epoch
            self.epoch, self.cursor = self.epoch + 1, 0

    def stop_gracefully(self) -> None:
        """Every rank agreed to stop after ``self.step``: snapshot it (unless that step is saved
        already, or nothing was trained) and end the run with ``Stopped``."""
        path = None
        if self.step > 0:
            if self.saved_step != self.step:
                self.log(f"stopping on SIGTERM: snapshot at step {self.step}")
                self.save_checkpoint(ckpt.step_name(self.step))
            path = self.root / ckpt.step_name(self.step)
        raise Stopped(self.step, path)

    def take_micro_batches(self, samples) -> list[list]:
        """Up to ``gradient_accumulation_steps`` lists of ``batch_size`` samples from the
        ``(cursor, sample)`` iterator, advancing ``self.cursor``; empty at the end of the epoch
        (the last step of an epoch may be short)."""
        cfg = self.cfg
        micro, current = [], []
        for cursor, sample in samples:
            self.cursor = cursor
            current.append(sample)
            if len(current) == cfg.batch_size:
                micro.append(current)
                current = []
                if len(micro) == cfg.gradient_accumulation_steps:
                    return micro
        if current:
            micro.append(current)
        return micro

    def step_timing(self, tokens: int, dt: float, t_data: float) -> dict[str, float | int]:
        """The throughput and timing keys every recipe's step metrics end with."""
        return {
            "tokens_per_second": round(tokens / dt, 1),
            "step_time_s": round(dt, 4),
            "data_time_s": round(t_data, 4),
            "skipped_records": self.stream.skipped,
        }

    def optimizer_step(self) -> tuple[float, float]:
        """Clip, step the optimizer and the schedule; returns ``(grad_norm, lr used)``."""
        self.dist.check_synced()
        if self.dist.is_distributed and not self.step_images:
            # No image in the whole step: one process leaves the vision tower's gradients None
            # (AdamW then skips it), the dummy images left zeros; drop them to match.
            distributed.drop_vision_grads(self.model)
        self.step_images = 0
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        clip = self.cfg.grad_clip_norm
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
        grad_norm = distributed.grad_norm(norm)  # a DTensor under FSDP
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
        self.saved_step = self.step

        state = (self.dist, self.model, self.optimizer, self.scheduler, final)

        def write(out: Path) -> None:
            full = None  # several processes: sharded training state, every rank its part
            if self.dist.is_distributed:
                _, full = dist_checkpoint.write_state(out, *state)
            self.model.save_pretrained(out, **({} if full is None else {"state_dict": full}))
            self.renderer.processor.save_pretrained(out)
            if final or self.dist.is_distributed:  # a finished run needs no optimizer state
                ckpt.save_trainer_state(out, progress)
            else:
                ckpt.save_trainer_state(out, progress, self.optimizer, self.scheduler)

        numbers = {**self.last_metrics, **(metrics or {})}
        manifest = {
            "job": cfg.job_name,
            **({"job_uid": cfg.job_uid} if cfg.job_uid else {}),
            "mode": self.mode,
            "type": "lora" if cfg.lora_rank else "full",
            "lora_rank": cfg.lora_rank,
            "base_model": cfg.base_model,
            **({"init_adapter": cfg.init_adapter} if cfg.init_adapter else {}),
            "metrics": {k: v for k, v in numbers.items() if isinstance(v, int | float)},
        }
        if ev := eval_section(metrics or {}, self.step, *self.headline_metric):
            manifest["eval"] = ev
        if not self.dist.is_main:  # this rank's part of the write; rank 0 does the rest
            dist_checkpoint.write_state(None, *state)
            self.dist.barrier()
            return self.root / name
        path, manifest = ckpt.write_checkpoint(self.root, name, write, manifest, self.step)
        self.reporter.on_checkpoint(path, self.step, manifest)
        keep = set()
        if cfg.keep_best_metric:  # the snapshot promote.select: best will want
            best = best_snapshot(self.root, cfg.keep_best_metric, cfg.keep_best_mode)
            keep = {best} if best else set()
        ckpt.prune(self.root, cfg.keep_last, self.reporter.may_prune, keep)
        self.dist.barrier()  # no rank moves on (or exits) before the checkpoint is whole
        return path

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)


def run(recipe: Recipe) -> dict:
    """setup -> train -> evaluate -> final checkpoint, reporting errors; returns a summary.
    Raises ``Stopped`` after a graceful stop on SIGTERM."""
    recipe.stop.install()
    try:
        if not recipe.setup():
            summary = {"final_checkpoint": str(recipe.final_path), "already_complete": True}
            recipe.reporter.on_done(summary)
            return summary
        recipe.train()
        eval_metrics = recipe.evaluate()
        path = recipe.save_checkpoint(ckpt.FINAL, final=True, metrics=eval_metrics)
    except Stopped as e:
        snapshot = str(e.snapshot) if e.snapshot else None
        recipe.reporter.on_stopped({"step": e.step, "snapshot": snapshot, "reason": "SIGTERM"})
        raise
    except Exception as e:
        recipe.reporter.on_error(f"{type(e).__name__}: {e}")
        raise
    finally:  # after success (or an agreed stop) all ranks leave together; after an error
        recipe.stop.restore()  # nobody waits
        distributed.shutdown(clean=sys.exc_info()[0] in (None, Stopped))
    summary = {
        "final_checkpoint": str(path),
        "steps": recipe.step,
        "loss": recipe.last_metrics.get("loss"),
        **eval_metrics,
    }
    recipe.reporter.on_done(summary)
    return summary
