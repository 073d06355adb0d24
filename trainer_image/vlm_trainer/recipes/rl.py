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

Per-step metrics: ``reward_mean``, ``reward_std``, ``kl`` (mean k3 per completion token, when
``kl_beta > 0``), ``clip_fraction``, ``completion_length`` (mean generated tokens, stop token
included), ``zero_variance_groups``, ``rollout_time_s``, ``rollout_tokens_per_second``, plus
SFT's ``loss``, ``lr``, ``grad_norm``, ``tokens_per_second`` ... Eval (with
``eval_dataset``): greedy completions of up to ``eval_max_prompts`` prompts,
``eval_reward_mean``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .. import distributed
from ..config import ConfigError, RLConfig, local_path
from ..data.collate import collate, model_inputs
from ..data.render import Rendered
from ..data.stream import Prompt, RecordStream
from ..losses import group_advantages, k3_kl, ppo_clip_token_loss, token_logprobs
from ..report import MultiReporter
from ..rewards import RewardError, load_reward
from ..rollout import RolloutStats, rollout
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
    cfg: RLConfig

    def setup(self) -> bool:
        cfg = self.cfg
        if distributed.env_world_size() > 1:
            # The loop is single-process; several ranks would each train alone.
            raise ConfigError(
                "rl under torchrun (WORLD_SIZE > 1) is not supported yet: run one process"
            )
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
        return True

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
        inputs = model_inputs(batch, self.device)
        logits = model(**inputs).logits / self.cfg.temperature
        return token_logprobs(logits, inputs["input_ids"])

    def train_step(self, micro: list[list[Prompt]], t0: float) -> dict:
        cfg, r = self.cfg, self.renderer
        t_data = time.perf_counter() - t0
        stats = RolloutStats()
        # Phase 1: every rollout of the step first; the loss normaliser (completion tokens of
        # the whole step) must be known before the first backward.
        planned: list[Planned] = []
        rewards, lengths = [], []
        skipped_groups = 0
        for prompts in micro:
            groups = rollout(
                self.model, r, prompts, cfg.completions_per_prompt, cfg.max_completion_tokens,
                cfg.temperature, cfg.top_p, stats=stats,
            )  # fmt: skip
            rw = self._rewards(prompts, groups)
            adv, keep = group_advantages(rw)
            rewards.append(rw.flatten())
            lengths += [c.num_tokens for g in groups for c in g]
            skipped_groups += int((~keep).sum())
            kept = [(c.sample, a) for g, k, ag in zip(groups, keep, adv, strict=True) if k
                    for c, a in zip(g, ag.tolist(), strict=True)]  # fmt: skip
            if kept:
                planned.append(Planned([s for s, _ in kept], torch.tensor([a for _, a in kept])))
        denom = max(sum(s.num_weighted for p in planned for s in p.samples), 1)

        # Phase 2: forward/backward of the kept completions, one micro-batch at a time.
        loss_total, kl_sum, clipped_sum, tokens = 0.0, 0.0, 0.0, 0
        for p in planned:
            batch = collate(p.samples, r.pad_token_id, r.image_token_id)
            mask = batch["weights"][:, 1:].to(self.device)
            logp = self._logprobs(self.train_model, batch)
            # One update per rollout: the rollout-time log-probs are these, detached.
            per_token, clipped = ppo_clip_token_loss(
                logp, logp.detach(), p.advantages.to(self.device), cfg.eps_clip, cfg.eps_clip_high
            )
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
        grad_norm, lr = self.optimizer_step()
        dt = time.perf_counter() - t0
        all_rewards = torch.cat(rewards)
        trained = sum(s.num_weighted for p in planned for s in p.samples)
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
            "tokens_per_second": round(tokens / dt, 1),
            "rollout_time_s": round(stats.seconds, 4),
            "rollout_tokens_per_second": round(
                stats.generated_tokens / max(stats.seconds, 1e-9), 1
            ),
            "step_time_s": round(dt, 4),
            "data_time_s": round(t_data, 4),
            "skipped_records": self.stream.skipped,
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
                self.model, self.renderer, prompts, 1, cfg.max_completion_tokens, greedy=True
            )
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
