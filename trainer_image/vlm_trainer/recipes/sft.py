"""SFT recipe: ``Config`` + ``main(cfg)``; setup -> train loop -> save.

Supported: full fine-tuning or LoRA (``lora_rank > 0``, peft) of an ``AutoModelForImageTextToText``
model (Qwen2-VL / Qwen2.5-VL / Qwen3-VL) on ``{"messages": [...]}`` JSONL with base64 images;
AdamW with warmup then cosine / linear / constant decay; gradient accumulation; gradient
clipping; optional gradient checkpointing and frozen vision tower; bf16 weights on GPU, fp32
on CPU; one process, or several under ``torchrun`` (DDP on CPU, FSDP2 on GPUs; see
``distributed.py``), where ``batch_size`` counts sequences over all ranks and each rank trains
on its share, so the loss curve is the one-process curve of the same config.

Assumed and guaranteed:

- The whole dataset (and eval set) is validated and rendered once before the model is loaded
  (``validate_before_training``): a bad line fails the run with the validator's messages and
  no checkpoint is written.
- ``batch_size`` is sequences per forward pass; one optimizer step consumes
  ``batch_size * gradient_accumulation_steps`` records (the last step of an epoch may have
  fewer). With ``tokens_per_batch`` a micro-batch is instead one padding-free row of whole
  samples, filled in stream order up to that many tokens (``data/packing.py``); the step count
  comes from the lengths rendered by validation, so the schedule and resume stay exact.
  The loss is the summed weighted token cross-entropy of the whole accumulated batch divided
  by its number of weighted tokens (see ``losses.py``), packed or padded, computed from the
  last hidden state at the target positions only, in chunks (``chunked_loss.py``,
  ``head.py``): no full-vocabulary logits, in training and in eval.
- Deterministic on CPU for a given seed and thread count; exact resume: a run restarted from a
  ``step-*`` checkpoint ends with bit-identical weights to one that was never interrupted
  (weights, optimizer, scheduler, RNG and data position are all restored).
"""

from __future__ import annotations

import time
from array import array

import torch

from .. import liger
from ..chunked_loss import sft_loss, weighted_ce_sum, weighted_token_accuracy
from ..config import ConfigError, SFTConfig, local_path
from ..data import packing
from ..data.collate import collate, model_inputs, num_samples, num_tokens
from ..data.prefetch import PrefetchStream
from ..data.stream import RecordStream
from ..data.validate import validate_file
from ..evaluate import exact_match_accuracy, single_answer_records
from ..head import forward_hidden
from ..losses import num_target_tokens
from ..report import MultiReporter
from .base import Recipe, lr_factor, run

Config = SFTConfig
__all__ = ["Config", "SFTRecipe", "lr_factor", "main"]


class SFTRecipe(Recipe):
    """Supervised fine-tuning on the assistant tokens of chat records with images."""

    mode = "sft"

    def setup(self) -> bool:
        cfg = self.cfg
        self.prepare_runtime()
        self.data_path = local_path(cfg.dataset)
        self.eval_path = local_path(cfg.eval_dataset) if cfg.eval_dataset else None
        if cfg.loss_kernel == "liger" and not liger.available(self.device):
            raise ConfigError("loss_kernel: liger needs CUDA and liger-kernel (the gpu extra)")
        trainable = self._validate_data()  # before any model is loaded
        self.stream = RecordStream(self.data_path, self.renderer, seed=cfg.seed)
        if cfg.data_workers:  # same samples, same order, rendered ahead in other processes
            self.stream = PrefetchStream(self.stream, cfg.data_workers)
        if not self.find_resume_point():
            return False
        self.build_training_state(len(self.stream) if trainable is None else trainable)
        self.rope_index = packing.find_rope_index(self.model) if cfg.tokens_per_batch else None
        self.pending = None  # packing: the sample that starts the next micro-batch
        return True

    def _validate_data(self) -> int | None:
        """Check every line first; raise ``DataInvalidError`` with all bad lines. Returns the
        number of trainable records (None when validation is disabled)."""
        if not self.cfg.validate_before_training:
            return None
        trainable = None
        self.lengths = array("q")  # rendered tokens per training record (packing plans)
        for path in (self.data_path, self.eval_path):
            if path is None:
                continue
            lengths = self.lengths if trainable is None else None
            summary = validate_file(path, "sft", self.renderer, lengths=lengths)
            summary.raise_if_invalid()
            if trainable is None:
                trainable = summary.trainable
                self.data_summary = summary.as_dict()
        if trainable == 0:
            raise ConfigError(f"{self.data_path}: every record is longer than max_seq_len")
        return trainable

    # ---------------------------------------------------------------------------------- train
    def count_steps(self, records_per_epoch: int) -> tuple[int, int]:
        cfg = self.cfg
        if not cfg.tokens_per_batch:
            return super().count_steps(records_per_epoch)
        # Each epoch's order packs differently: plan every epoch with the recipe's own rule.
        per_epoch = [
            packing.plan_steps(
                (n for i in self.stream.order(e) if (n := self.lengths[i])),
                cfg.tokens_per_batch,
                cfg.gradient_accumulation_steps,
            )
            for e in range(cfg.epochs)
        ]
        return max(1, per_epoch[0]), max(1, sum(per_epoch))

    def next_batches(self, samples) -> list[dict]:
        """Collated micro-batches for one optimizer step (empty at the end of the epoch)."""
        cfg, r = self.cfg, self.renderer
        if cfg.tokens_per_batch:
            return self.next_packed(samples)
        micro, current = [], []
        for cursor, sample in samples:
            self.cursor = cursor
            current.append(sample)
            if len(current) == cfg.batch_size:
                micro.append(collate(self.local_share(current), r.pad_token_id, r.image_token_id))
                current = []
                if len(micro) == cfg.gradient_accumulation_steps:
                    return micro
        if current:
            micro.append(collate(self.local_share(current), r.pad_token_id, r.image_token_id))
        return micro

    def next_packed(self, samples) -> list[dict]:
        """Packed micro-batches for one optimizer step, filled greedily as ``packing.fill``
        plans them. The sample that overflows a micro-batch is kept for the next one, and
        ``self.cursor`` only counts samples already in a batch, so a checkpoint taken now
        resumes with that sample."""
        cfg = self.cfg
        micro, group, used = [], [], 0
        while len(micro) < cfg.gradient_accumulation_steps:
            item, self.pending = self.pending or next(samples, None), None
            if item is None:
                break
            cursor, sample = item
            if group and used + sample.num_tokens > cfg.tokens_per_batch:
                micro.append(self.packed(group))
                group, used, self.pending = [], 0, item
                continue
            group.append(sample)
            used += sample.num_tokens
            self.cursor = cursor
        if group:
            micro.append(self.packed(group))
        return micro

    def packed(self, group: list) -> dict:
        batch = packing.pack(self.local_share(group), self.renderer.image_token_id)
        return packing.add_position_ids(batch, self.rope_index)

    def train_step(self, micro: list[dict], t0: float) -> dict:
        """Forward/backward every micro-batch, then one optimizer step. ``t0`` is when reading
        the data for this step began, so ``tokens_per_second`` covers data and compute."""
        t_data = time.perf_counter() - t0
        # Several processes: every rank divides by the global count of weighted tokens and the
        # gradients are summed, which is exactly one process's normalisation.
        denom = self.dist.all_sum(sum(num_target_tokens(b["weights"]) for b in micro))
        loss_total = torch.zeros((), device=self.device)
        tokens = samples = 0
        for i, batch in enumerate(micro):
            inputs = model_inputs(batch, self.device)
            with self.dist.accumulate(self.train_model, last=i == len(micro) - 1):
                hidden, head = forward_hidden(self.train_model, inputs)
                w = batch["weights"].to(self.device)
                if self.cfg.loss_kernel == "liger":
                    total, _ = liger.weighted_ce_sum(hidden, head, inputs["input_ids"], w)
                    loss = total / max(float(denom), 1.0)
                else:
                    loss = sft_loss(hidden, head, inputs["input_ids"], w, denom)
                loss.backward()
            loss_total += loss.detach()
            tokens += num_tokens(batch)
            samples += num_samples(batch)
        if self.dist.is_distributed:  # report global numbers (shares include dummy rows)
            loss_sum, tokens, samples = self.dist.all_sum(float(loss_total), tokens, samples)
            loss_total = torch.tensor(loss_sum, dtype=torch.float64)
            tokens, samples = int(tokens), int(samples)
        grad_norm, lr = self.optimizer_step()
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
            **self.step_timing(tokens, dt, t_data),
        }

    # ----------------------------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Teacher-forced loss and next-token accuracy on the assistant tokens of the eval set."""
        if self.eval_path is None:
            return {}
        self.model.eval()
        stream = RecordStream(self.eval_path, self.renderer, seed=0, shuffle=False)
        totals = {"ce": 0.0, "weight": 0.0, "correct": 0, "count": 0}
        r = self.renderer

        def run_batch(samples) -> None:
            b = collate(samples, r.pad_token_id, r.image_token_id)
            inputs = model_inputs(b, self.device)
            hidden, head = forward_hidden(self.model, inputs)
            w = b["weights"].to(self.device)
            s, n = weighted_ce_sum(hidden, head, inputs["input_ids"], w)
            c, k = weighted_token_accuracy(hidden, head, inputs["input_ids"], w)
            totals["ce"] += float(s)
            totals["weight"] += float(n)
            totals["correct"] += c
            totals["count"] += k

        batch: list = []
        for _, sample in stream.samples(0):
            batch.append(sample)
            if len(batch) == self.cfg.batch_size:
                run_batch(batch)
                batch = []
        if batch:
            run_batch(batch)
        self.model.train()
        metrics = {
            "step": self.step,
            "eval_loss": totals["ce"] / max(totals["weight"], 1.0),
            "eval_token_accuracy": totals["correct"] / max(totals["count"], 1),
            "eval_records": len(stream),
        }
        if (exact := self._exact_match()) is not None:
            metrics["eval_exact_match"] = exact
        self.reporter.on_eval(metrics)
        return metrics

    def _exact_match(self) -> float | None:
        """Greedy-answer exact match when every eval record has one assistant answer."""
        if not hasattr(self, "_single_answers"):
            self._single_answers = single_answer_records(self.eval_path)
        if not self._single_answers:
            return None
        # FSDP: every rank generates until all are done (the ranks hold the same records).
        # A KV cache for generation; training runs without one (config.use_cache is False).
        gen = {"use_cache": True} | ({"synced_gpus": True} if self.dist.strategy == "fsdp" else {})
        return exact_match_accuracy(
            self.model, self.renderer, self._single_answers, self.cfg.batch_size, **gen
        )


def main(cfg: SFTConfig, reporter: MultiReporter | None = None) -> dict:
    """Run SFT to completion (or resume it); returns a summary with the final checkpoint path."""
    return run(SFTRecipe(cfg, reporter))
