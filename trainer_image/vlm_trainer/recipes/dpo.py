"""DPO recipe: ``Config`` + ``main(cfg)``; setup -> train loop -> save.

Supported: direct preference optimisation of an image-text model, full fine-tuning or LoRA, on
``{"chosen": {"messages": [...]}, "rejected": {"messages": [...]}}`` JSONL whose sides may each
hold images (the same images or different ones); losses ``sigmoid`` (default), ``ipo`` and
``hinge`` (``losses.dpo_losses``) with ``beta``; everything else (optimizer, schedule,
accumulation, checkpoints, exact resume, metrics.jsonl, reporters) as in SFT (``base.Recipe``).

Assumed and guaranteed:

- A side's sequence log-prob is the sum of the log-probs of its weighted tokens, with the
  weights of SFT (assistant tokens; ``train_on`` applies). Chosen and rejected go through the
  model in one forward pass (2 x ``batch_size`` sequences; images of both sides in sample
  order).
- Reference (``recipes/reference.py``): the starting weights, frozen, for full fine-tuning;
  the adapter-disabled base for LoRA. With ``cache_reference_logprobs`` the reference
  log-probs of every training and eval pair are computed once, in file order, before the first
  step, and the frozen copy is freed; a resumed run recomputes them (they depend only on the
  base model and the data, so they come out the same).
- ``batch_size`` counts pairs. The loss of a step is the mean over the pairs of the whole
  accumulated batch. Per-step metrics: ``loss``, ``chosen_reward`` and ``rejected_reward``
  (``beta * (log pi - log ref)``, batch means), ``margin`` (their difference), ``accuracy``
  (fraction of pairs whose chosen reward is higher), plus SFT's throughput numbers.
- Eval (with ``eval_dataset``, after training): ``eval_loss``, ``eval_reward_accuracy`` (as
  ``accuracy``) and ``eval_preference_accuracy``: the fraction of held-out pairs where the
  policy itself gives the chosen answer the higher log-prob (reference-free; about 50% for a
  model that has no preference, which the reward accuracy cannot show at the start, where
  every reward is 0).

Several processes (``torchrun``; DDP on CPU, FSDP2 on GPUs, see ``distributed.py``):
``batch_size`` counts pairs over all ranks and each rank trains on its contiguous share of each
micro-batch (a pair travels whole, with the images of both sides). Every rank divides its
summed pair losses by the global pair count of the step, so the summed gradient is the
one-process gradient; the metrics are sums over all ranks, reported by rank 0. A rank whose
share is empty gets a zero-weight copy of a pair, and a share without any image a zero-weight
dummy image pair (index -1, masked out of the loss and the metrics), so every rank runs the
vision tower every step. The reference runs per rank on that rank's pairs; the cached
reference log-probs are computed in full by every rank (the same numbers as one process).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..chunked_loss import sequence_logprobs
from ..config import DPOConfig, local_path
from ..data.collate import collate, model_inputs
from ..data.stream import Pair, RecordStream
from ..head import forward_hidden
from ..losses import dpo_losses
from ..report import MultiReporter
from .base import Recipe, run
from .reference import Reference

Config = DPOConfig
__all__ = ["Config", "DPORecipe", "main", "pair_logprobs", "preference_logprobs"]


def pair_logprobs(model, renderer, pairs: list[Pair], device) -> tuple[torch.Tensor, ...]:
    """``(chosen, rejected, tokens)``: sequence log-probs ``(B,)`` of both sides from one
    forward pass, and the number of (non-pad) tokens in it."""
    samples = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    batch = collate(samples, renderer.pad_token_id, renderer.image_token_id)
    inputs = model_inputs(batch, device)
    hidden, head = forward_hidden(model, inputs)  # no full-vocabulary logits (chunked_loss.py)
    seq = sequence_logprobs(hidden, head, inputs["input_ids"], batch["weights"].to(device))
    n = len(pairs)
    return seq[:n], seq[n:], int(batch["attention_mask"].sum())


@torch.no_grad()
def preference_logprobs(model, renderer, path: Path, batch_size: int, device) -> torch.Tensor:
    """``(records, 2)`` chosen/rejected sequence log-probs of every pair of ``path`` in file
    order; NaN for pairs that truncation skips. Used for the reference cache and by tests."""
    stream = RecordStream(path, renderer, seed=0, shuffle=False, mode="dpo")
    out = torch.full((len(stream), 2), float("nan"))
    was_training = model.training
    model.eval()
    batch: list[Pair] = []

    def flush() -> None:
        c, r, _ = pair_logprobs(model, renderer, batch, device)
        idx = torch.tensor([p.index for p in batch])
        out[idx] = torch.stack([c, r], -1).float().cpu()
        batch.clear()

    for _, pair in stream.samples(0):
        batch.append(pair)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    model.train(was_training)
    return out


class DPORecipe(Recipe):
    """Direct preference optimisation on chosen/rejected pairs with images."""

    mode = "dpo"
    cfg: DPOConfig

    def setup(self) -> bool:
        cfg = self.cfg
        self.prepare_runtime()
        self.data_path = local_path(cfg.dataset)
        self.eval_path = local_path(cfg.eval_dataset) if cfg.eval_dataset else None
        trainable = self.validate_data()  # before any model is loaded
        self.stream = RecordStream(self.data_path, self.renderer, seed=cfg.seed, mode="dpo")
        if not self.find_resume_point():
            return False
        self.build_training_state(len(self.stream) if trainable is None else trainable)
        self.reference = Reference(self.model, cfg, self.dtype, self.device)
        self.cache: dict[str, torch.Tensor] = {}
        if cfg.cache_reference_logprobs:
            self._cache_reference()
        return True

    def _cache_reference(self) -> None:
        t0 = time.perf_counter()
        with self.reference.model() as ref:
            for name, path in (("train", self.data_path), ("eval", self.eval_path)):
                if path is not None:
                    self.cache[name] = preference_logprobs(
                        ref, self.renderer, path, self.cfg.batch_size, self.device
                    )
        self.reference.release()  # the point of caching: no second model during training
        self.log(
            f"cached reference log-probs of {len(self.cache['train'])} training pairs in "
            f"{time.perf_counter() - t0:.1f}s"
        )

    def _reference_logprobs(self, pairs: list[Pair], split: str) -> tuple[torch.Tensor, ...]:
        if split in self.cache:
            rows = self.cache[split][torch.tensor([max(p.index, 0) for p in pairs])]
            # Zero-weight pairs (index -1) get 0: their cached row may be NaN (truncated).
            real = torch.tensor([p.index >= 0 for p in pairs]).unsqueeze(-1)
            rows = torch.where(real, rows, torch.zeros_like(rows)).to(self.device)
            return rows[:, 0], rows[:, 1]
        with self.reference.model() as ref:
            c, r, _ = pair_logprobs(ref, self.renderer, pairs, self.device)
        return c.detach(), r.detach()

    # ---------------------------------------------------------------------------------- train
    # Several processes: a pair is the unit of a share. Zero-weight pairs carry index -1 (a
    # data pair's index is its record number, >= 0), which masks them out of loss and metrics.
    def zero_weight(self, sample: Pair) -> Pair:
        zero = super().zero_weight
        return Pair(zero(sample.chosen), zero(sample.rejected), -1)

    def has_image(self, sample: Pair) -> bool:
        return super().has_image(sample.chosen) or super().has_image(sample.rejected)

    def dummy_image_sample(self) -> Pair:
        image = super().dummy_image_sample()
        return Pair(image, image, -1)

    def next_batches(self, samples) -> list[list[Pair]]:
        """This rank's share of each micro-batch of the step (all of it for one process)."""
        return [self.local_share(m) for m in self.take_micro_batches(samples)]

    def train_step(self, micro: list[list[Pair]], t0: float) -> dict:
        cfg = self.cfg
        t_data = time.perf_counter() - t0
        # The global pair count: every rank's loss is divided by it and gradients are summed.
        n_pairs = self.dist.all_sum(sum(p.index >= 0 for m in micro for p in m))
        sums = dict.fromkeys(("loss", "chosen", "rejected", "correct", "logp_c", "logp_r"), 0.0)
        tokens = 0
        for i, pairs in enumerate(micro):
            real = torch.tensor([p.index >= 0 for p in pairs], device=self.device)
            ref_c, ref_r = self._reference_logprobs(pairs, "train")
            with self.dist.accumulate(self.train_model, last=i == len(micro) - 1):
                pol_c, pol_r, n_tok = pair_logprobs(
                    self.train_model, self.renderer, pairs, self.device
                )
                loss, rew_c, rew_r = dpo_losses(pol_c, pol_r, ref_c, ref_r, cfg.beta, cfg.dpo_loss)
                loss = torch.where(real, loss, torch.zeros_like(loss))  # dummies train nothing
                # Each micro-batch's share of the mean over the whole accumulated batch.
                (loss.sum() / n_pairs).backward()
            rew_c, rew_r, pol_c, pol_r = rew_c[real], rew_r[real], pol_c[real], pol_r[real]
            sums["loss"] += float(loss.detach().sum())
            sums["chosen"] += float(rew_c.sum())
            sums["rejected"] += float(rew_r.sum())
            sums["correct"] += float((rew_c > rew_r).sum())
            sums["logp_c"] += float(pol_c.detach().sum())
            sums["logp_r"] += float(pol_r.detach().sum())
            tokens += n_tok
        if self.dist.is_distributed:  # global metrics (tokens include the dummy rows)
            totals = self.dist.all_sum(*sums.values(), tokens)
            sums, tokens = dict(zip(sums, totals[:-1], strict=True)), int(totals[-1])
            n_pairs = int(n_pairs)
        grad_norm, lr = self.optimizer_step()
        dt = time.perf_counter() - t0
        mean = {k: v / n_pairs for k, v in sums.items()}
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": round(self.epoch + self.cursor / max(1, len(self.stream)), 4),
            "loss": mean["loss"],
            "chosen_reward": mean["chosen"],
            "rejected_reward": mean["rejected"],
            "margin": mean["chosen"] - mean["rejected"],
            "accuracy": mean["correct"],
            "chosen_logp": mean["logp_c"],
            "rejected_logp": mean["logp_r"],
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": tokens,
            "samples": n_pairs,
            **self.step_timing(tokens, dt, t_data),
        }

    # ----------------------------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self) -> dict:
        if self.eval_path is None:
            return {}
        cfg = self.cfg
        policy = preference_logprobs(
            self.model, self.renderer, self.eval_path, cfg.batch_size, self.device
        )
        if "eval" in self.cache:
            ref = self.cache["eval"]
        else:
            with self.reference.model() as model:
                ref = preference_logprobs(
                    model, self.renderer, self.eval_path, cfg.batch_size, self.device
                )
        ok = ~policy.isnan().any(-1)
        policy, ref = policy[ok], ref[ok]
        loss, rew_c, rew_r = dpo_losses(
            policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], cfg.beta, cfg.dpo_loss
        )
        n = max(int(ok.sum()), 1)
        metrics = {
            "step": self.step,
            "eval_loss": float(loss.sum()) / n,
            "eval_reward_accuracy": float((rew_c > rew_r).sum()) / n,
            "eval_preference_accuracy": float((policy[:, 0] > policy[:, 1]).sum()) / n,
            "eval_margin": float((rew_c - rew_r).sum()) / n,
            "eval_records": int(ok.sum()),
        }
        self.reporter.on_eval(metrics)
        return metrics


def main(cfg: DPOConfig, reporter: MultiReporter | None = None) -> dict:
    """Run DPO to completion (or resume it); returns a summary with the final checkpoint path."""
    return run(DPORecipe(cfg, reporter))
