"""RL recipe (GRPO-style): ``Config`` + ``main(cfg)``; setup -> train loop -> save.

Supported: on-policy RL of an image-text model, full fine-tuning or LoRA, on prompt records
``{"messages": [...], ...}`` whose last message is from the user (images allowed anywhere a
user turn may hold them); other top-level fields (e.g. ``"answer"``) go to the reward function
(``rewards.py`` documents its signature and the built-ins). Everything else (optimizer,
schedule, accumulation, checkpoints, exact resume, metrics.jsonl, reporters) as in SFT.

One optimizer step:

1. Rollouts (``rollout.py``): for each micro-batch of ``batch_size`` prompts, sample
   ``completions_per_prompt`` completions (``temperature``, ``top_p``, at most
   ``max_completion_tokens``) with the current policy; score each with the reward.
2. Group advantages ``(r - mean) / (std + eps)`` per prompt (``losses.group_advantages``);
   groups whose rewards are all equal carry no signal and are skipped (counted in
   ``zero_variance_groups``), so they cost no forward pass.
3. Loss: token-level PPO-clip (``eps_clip`` below, ``eps_clip_high`` above, default
   ``eps_clip``) on the ratio to the rollout-time log-probs, plus ``kl_beta`` x k3 KL to the
   reference when ``kl_beta > 0`` (``recipes/reference.py``; no reference model otherwise),
   summed over every completion token of the step and divided by their number. Log-probs are
   of the policy at the sampling temperature (logits / temperature), as in TRL.

Assumed: one policy update per rollout batch. The weights that sampled the completions are
then the weights being trained, so the rollout-time log-probs equal the current ones: they are
taken from the same forward pass, detached, instead of a second pass (the ratio is 1 in value
and its gradient is the policy gradient; the clip only acts with several updates per rollout
batch, which this recipe does not do yet). ``batch_size`` counts prompts; a forward pass holds
up to batch_size x completions_per_prompt sequences.

Sampling: completion ``j`` of the prompt with record number ``i`` at optimizer step ``t`` draws
from a generator seeded by ``(seed, t, i, j)`` (``rollout.SeededSampler``): independent of the
batch it shares and of the world size, and replayed exactly on resume.

Several processes (``torchrun``; DDP on CPU, FSDP2 on GPUs, see ``distributed.py``):
``batch_size`` counts prompts over all ranks; each rank rolls out and trains its contiguous
share of each micro-batch, a prompt's whole group on one rank (so group advantages are those
of one process). The loss normaliser (completion tokens of the step) and every metric are
global, gathered in global order, so the curve is the one-process curve. Every rank runs the
same passes: a rank whose share has no image rolls out a dummy image prompt too (dropped), a
micro-batch that trains on any rank trains on every rank (zero-weight rows where a rank kept
nothing, a zero-weight dummy image where its rows have none), and under FSDP generation keeps
stepping until every rank is done (``synced_gpus``), since each step all-gathers weights.

Per-step metrics: ``reward_mean``, ``reward_std``, ``kl`` (mean k3 per completion token, when
``kl_beta > 0``), ``clip_fraction``, ``completion_length`` (mean generated tokens, stop token
included), ``zero_variance_groups``, ``rollout_time_s``, ``rollout_tokens_per_second``, plus
SFT's ``loss``, ``lr``, ``grad_norm``, ``tokens_per_second`` ... Eval (with
``eval_dataset``): greedy completions of up to ``eval_max_prompts`` prompts,
``eval_reward_mean``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass

import torch

from ..chunked_loss import token_logprobs
from ..config import ConfigError, RLConfig, local_path
from ..data.collate import collate, model_inputs
from ..data.render import Rendered
from ..data.stream import Prompt, RecordStream
from ..head import forward_hidden
from ..losses import group_advantages, k3_kl, ppo_clip_token_loss
from ..report import MultiReporter
from ..rewards import RewardError, load_reward
from ..rollout import RolloutStats, rollout, sample_seed
from .base import Recipe, run
from .reference import Reference

Config = RLConfig
__all__ = ["Config", "RLRecipe", "main"]


@dataclass
class Planned:
    """The completions of one micro-batch that will be trained on, with their advantages."""

    samples: list[Rendered]
    advantages: torch.Tensor  # (len(samples),)


class RLRecipe(Recipe):
    """GRPO-style RL with verifiable rewards on image prompts."""

    mode = "rl"
    headline_metric = ("eval_reward_mean", "max")
    cfg: RLConfig

    def setup(self) -> bool:
        cfg = self.cfg
        try:
            self.reward_fn = load_reward(cfg.reward)  # a typo fails before any model loads
        except RewardError as e:
            raise ConfigError(f"reward: {e}") from e
        self.prepare_runtime()
        self.data_path = local_path(cfg.dataset)
        self.eval_path = local_path(cfg.eval_dataset) if cfg.eval_dataset else None
        trainable = self.validate_data()
        self.stream = RecordStream(self.data_path, self.renderer, seed=cfg.seed, mode="rl")
        if not self.find_resume_point():
            return False
        self.build_training_state(len(self.stream) if trainable is None else trainable)
        self.reference = (
            Reference(self.model, cfg, self.dtype, self.device) if cfg.kl_beta > 0 else None
        )
        if self.dist.strategy == "fsdp":
            self._fsdp_warm_up()
        return True

    @torch.no_grad()
    def _fsdp_warm_up(self) -> None:
        """One forward through the FSDP root on every rank before the first rollout: HF's
        generate encodes images by calling the vision tower directly, and FSDP2 must have met
        its root first (else "FSDP requires running forward through the root module first").
        Eval mode: no dropout, so no RNG is drawn that one process would not draw."""
        r = self.renderer
        batch = collate([self.dummy_image_sample()], r.pad_token_id, r.image_token_id)
        self.model.eval()
        self.model(**model_inputs(batch, self.device))
        self.model.train()

    # ---------------------------------------------------------------------------------- train
    def next_batches(self, samples) -> list[list[Prompt]]:
        return self.take_micro_batches(samples)

    def _rewards(self, prompts: list[Prompt], groups) -> torch.Tensor:
        try:
            scores = [
                [self.reward_fn(c.text, p.fields) for c in g]
                for p, g in zip(prompts, groups, strict=True)
            ]
        except RewardError as e:  # deterministic: a restart would fail the same way
            raise ConfigError(f"reward: {e}") from e
        return torch.tensor(scores, dtype=torch.float32)

    def _logprobs(self, model, batch: dict) -> torch.Tensor:
        """``(B, L-1)`` token log-probs at the sampling temperature, computed at the completion
        tokens only (0 elsewhere; the loss masks them), in chunks (``chunked_loss.py``)."""
        inputs = model_inputs(batch, self.device)
        hidden, head = forward_hidden(model, inputs)
        w = batch["weights"].to(self.device)
        return token_logprobs(hidden, head, inputs["input_ids"], w, 1.0 / self.cfg.temperature)

    def _prompt_share(self, prompts: list[Prompt]) -> list[Prompt]:
        """This rank's prompts of one global micro-batch (all of them for one process). Copies
        that must not count (an empty share's stand-in, the dummy image prompt) have index -1
        (a record's index is >= 0)."""
        if not self.dist.is_distributed:
            return prompts
        mine = self.dist.share(prompts, lambda p: dataclasses.replace(p, index=-1))
        if not any(p.prompt.pixel_values is not None for p in mine):
            mine = [*mine, self._dummy_image_prompt()]  # every rank's prefill runs the vision
        return mine

    def _dummy_image_prompt(self) -> Prompt:
        """A one-image prompt (index -1), rendered once; its completions are dropped."""
        if getattr(self, "_dummy_prompt", None) is None:
            from PIL import Image

            from ..data.images import encode_data_url
            from ..data.jsonl import parse_line

            url = encode_data_url(Image.new("RGB", (32, 32)))
            image = {"type": "image_url", "image_url": {"url": url}}
            line = {"messages": [{"role": "user", "content": [image]}]}
            record, issues = parse_line(json.dumps(line), file="<dummy image>", line=1, mode="rl")
            assert record is not None, issues
            self._dummy_prompt = Prompt(self.renderer.render_prompt(record.conversation), -1)
        return self._dummy_prompt

    def train_step(self, micro: list[list[Prompt]], t0: float) -> dict:
        cfg, r = self.cfg, self.renderer
        t_data = time.perf_counter() - t0
        stats = RolloutStats()
        # Phase 1: every rollout of the step first; the loss normaliser (completion tokens of
        # the whole step) must be known before the first backward.
        planned: list[Planned] = []  # one per micro-batch: this rank's kept completions
        spare: list[Rendered] = []  # one completion per micro-batch, for a zero-weight row
        local: list[dict] = []  # per micro-batch: what the global numbers are made of
        for prompts in micro:
            mine = self._prompt_share(prompts)
            seeds = [sample_seed(cfg.seed, self.step, p.index) for p in mine]
            groups = rollout(
                self.model, r, mine, cfg.completions_per_prompt, cfg.max_completion_tokens,
                cfg.temperature, cfg.top_p, stats=stats, seeds=seeds,
                synced=self.dist.strategy == "fsdp",
            )  # fmt: skip
            spare.append(groups[0][0].sample)
            real = [(p, g) for p, g in zip(mine, groups, strict=True) if p.index >= 0]
            kept, rewards, lengths, skipped = [], [], [], 0
            if real:
                rw = self._rewards([p for p, _ in real], [g for _, g in real])
                adv, keep = group_advantages(rw)
                rewards = rw.flatten().tolist()
                lengths = [c.num_tokens for _, g in real for c in g]
                skipped = int((~keep).sum())
                kept = [(c.sample, a) for (_, g), k, ag in zip(real, keep, adv, strict=True) if k
                        for c, a in zip(g, ag.tolist(), strict=True)]  # fmt: skip
            planned.append(Planned([s for s, _ in kept], torch.tensor([a for _, a in kept])))
            local.append({
                "rewards": rewards, "lengths": lengths, "skipped": skipped, "kept": len(kept),
                "weighted": sum(s.num_weighted for s, _ in kept),
                "images": sum(s.pixel_values is not None for s, _ in kept),
            })  # fmt: skip
        # Every rank's numbers, micro-batch by micro-batch in rank order: the global order.
        ranks = self.dist.all_gather(local)
        rows = [by_rank[i] for i in range(len(micro)) for by_rank in ranks]
        trained = sum(m["weighted"] for m in rows)
        denom = max(trained, 1)
        active = [i for i in range(len(micro)) if any(by_rank[i]["kept"] for by_rank in ranks)]
        drop_grads = False
        if self.dist.is_distributed:
            self.step_images = sum(m["images"] for m in rows)  # see optimizer_step
            if not active:  # DDP reduces once per step: a zero-weight pass, then no gradients
                active, drop_grads = [0], True

        # Phase 2: forward/backward of the kept completions, one micro-batch at a time.
        loss_total, kl_sum, clipped_sum, tokens = 0.0, 0.0, 0.0, 0
        for n, i in enumerate(active):
            samples, advantages = planned[i].samples, planned[i].advantages
            if self.dist.is_distributed:  # the same passes on every rank, vision included
                if not samples:
                    samples, advantages = [self.zero_weight(spare[i])], torch.zeros(1)
                if not any(self.has_image(s) for s in samples):
                    samples = [*samples, self.dummy_image_sample()]
                    advantages = torch.cat([advantages, torch.zeros(1)])
            batch = collate(samples, r.pad_token_id, r.image_token_id)
            mask = batch["weights"][:, 1:].to(self.device)
            with self.dist.accumulate(self.train_model, last=n == len(active) - 1):
                logp = self._logprobs(self.train_model, batch)
                # One update per rollout: the rollout-time log-probs are these, detached.
                per_token, clipped = ppo_clip_token_loss(
                    logp, logp.detach(), advantages.to(self.device), cfg.eps_clip,
                    cfg.eps_clip_high,
                )  # fmt: skip
                if self.reference is not None:
                    with self.reference.model() as ref:
                        ref_logp = self._logprobs(ref, batch)
                    kl = k3_kl(logp, ref_logp)
                    per_token = per_token + cfg.kl_beta * kl
                    kl_sum += float((kl.detach() * mask).sum())
                loss = (per_token * mask).sum() / denom
                loss.backward()
            loss_total += float(loss.detach())
            clipped_sum += float((clipped.float() * mask).sum())
            tokens += int(batch["attention_mask"].sum())
        if drop_grads:
            self.optimizer.zero_grad(set_to_none=True)
        if self.dist.is_distributed:  # global sums (tokens include the dummy rows)
            loss_total, kl_sum, clipped_sum, tokens = self.dist.all_sum(
                loss_total, kl_sum, clipped_sum, tokens
            )
            tokens = int(tokens)
        lengths = [x for m in rows for x in m["lengths"]]
        all_rewards = torch.tensor([x for m in rows for x in m["rewards"]], dtype=torch.float32)
        skipped_groups = sum(m["skipped"] for m in rows)
        grad_norm, lr = self.optimizer_step()
        dt = time.perf_counter() - t0
        metrics = {
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": round(self.epoch + self.cursor / max(1, len(self.stream)), 4),
            "loss": loss_total,
            "reward_mean": float(all_rewards.mean()),
            "reward_std": float(all_rewards.std()) if all_rewards.numel() > 1 else 0.0,
            "clip_fraction": clipped_sum / max(trained, 1),
            "completion_length": sum(lengths) / max(len(lengths), 1),
            "zero_variance_groups": skipped_groups,
            "groups": sum(len(m) for m in micro),
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": tokens,
            "samples": len(lengths),
            "rollout_time_s": round(stats.seconds, 4),
            "rollout_tokens_per_second": round(sum(lengths) / max(stats.seconds, 1e-9), 1),
            **self.step_timing(tokens, dt, t_data),
        }
        if self.reference is not None:
            metrics["kl"] = kl_sum / max(trained, 1)
        return metrics

    # ----------------------------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean reward of greedy completions on the eval prompts."""
        if self.eval_path is None:
            return {}
        cfg = self.cfg
        stream = RecordStream(self.eval_path, self.renderer, seed=0, shuffle=False, mode="rl")
        total, count, length = 0.0, 0, 0

        def score(prompts: list[Prompt]) -> None:
            nonlocal total, count, length
            groups = rollout(
                self.model, self.renderer, prompts, 1, cfg.max_completion_tokens, greedy=True,
                synced=self.dist.strategy == "fsdp",
            )  # fmt: skip
            total += float(self._rewards(prompts, groups).sum())
            count += len(prompts)
            length += sum(g[0].num_tokens for g in groups)

        batch: list[Prompt] = []
        for _, prompt in stream.samples(0):
            batch.append(prompt)
            if len(batch) == cfg.batch_size * cfg.completions_per_prompt:
                score(batch)
                batch = []
            if count + len(batch) >= cfg.eval_max_prompts:
                break
        if batch:
            score(batch)
        metrics = {
            "step": self.step,
            "eval_reward_mean": total / max(count, 1),
            "eval_completion_length": length / max(count, 1),
            "eval_records": count,
        }
        self.reporter.on_eval(metrics)
        return metrics


def main(cfg: RLConfig, reporter: MultiReporter | None = None) -> dict:
    """Run RL to completion (or resume it); returns a summary with the final checkpoint path."""
    return run(RLRecipe(cfg, reporter))
