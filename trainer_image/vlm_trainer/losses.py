"""Loss functions: pure functions of logits, token ids and weights (no model, no state).

Conventions shared by every recipe:

- ``weights[b, t]`` says whether token ``t`` of sample ``b`` is a training target (see
  ``data/render.py``); the logits at position ``t - 1`` predict it, so every function here
  shifts by one: ``logits[:, :-1]`` against ``input_ids[:, 1:]`` weighted by ``weights[:, 1:]``.
- Log-probabilities and cross-entropy are computed in float32 whatever the model dtype.
- The recipes do not call the logits functions here: they use their hidden-state versions in
  ``chunked_loss.py`` (same names, same values; no full-vocabulary logits), which the tests
  compare against these. The DPO and RL functions below work on log-probs and are shared.

SFT loss (what ``recipes/sft.py`` optimises): the *summed* weighted token cross-entropy of all
micro-batches of one optimizer step divided by the number of weighted tokens in that whole
accumulated batch. Every assistant token counts the same, however the tokens are spread over
sequences and micro-batches, and gradient accumulation gives exactly the gradient of the big
batch (a mean of per-micro-batch means would not).

DPO (``dpo_losses``) takes sequence log-probs; the recipe averages it over the pairs of the
accumulated batch. RL (``group_advantages``, ``ppo_clip_token_loss``, ``k3_kl``) works on token
log-probs of sampled completions; ``recipes/rl.py`` sums the per-token loss over every
completion token of the step and divides by their number (token-level, as SFT), so long and
short completions weigh the same per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shifted(logits: torch.Tensor, input_ids: torch.Tensor, weights: torch.Tensor):
    """``(logits[:, :-1], input_ids[:, 1:], weights[:, 1:])``: predictions aligned with targets."""
    return logits[:, :-1], input_ids[:, 1:], weights[:, 1:]


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each next token, shape ``(B, L-1)``, float32."""
    lg, targets, _ = shifted(logits, input_ids, input_ids)
    logp = torch.log_softmax(lg.float(), dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def weighted_ce_sum(
    logits: torch.Tensor, input_ids: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_t w_t * CE_t, sum_t w_t)`` over a micro-batch; both float32 scalars."""
    lg, targets, w = shifted(logits, input_ids, weights)
    ce = F.cross_entropy(
        lg.float().reshape(-1, lg.shape[-1]), targets.reshape(-1), reduction="none"
    ).view_as(targets)
    w = w.float()
    return (ce * w).sum(), w.sum()


def sft_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    weights: torch.Tensor,
    num_weighted_tokens: float | torch.Tensor,
) -> torch.Tensor:
    """This micro-batch's share of the SFT loss: its weighted CE sum divided by the number of
    weighted tokens in the *whole accumulated batch* (``num_weighted_tokens``), so summing the
    shares of all micro-batches gives the batch's mean token loss."""
    total, _ = weighted_ce_sum(logits, input_ids, weights)
    return total / max(float(num_weighted_tokens), 1.0)


def num_target_tokens(weights: torch.Tensor) -> float:
    """Weighted target tokens of a batch (after the shift), for ``sft_loss``'s denominator."""
    return float(weights[:, 1:].sum())


def sequence_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Per-sample sum of the weighted tokens' log-probabilities, shape ``(B,)`` (DPO, RL)."""
    _, _, w = shifted(logits, input_ids, weights)
    return (token_logprobs(logits, input_ids) * w.float()).sum(-1)


def weighted_token_accuracy(
    logits: torch.Tensor, input_ids: torch.Tensor, weights: torch.Tensor
) -> tuple[int, int]:
    """``(correct, total)`` greedy next-token predictions over weighted tokens (eval metric)."""
    lg, targets, w = shifted(logits, input_ids, weights)
    mask = w > 0
    correct = (lg.argmax(-1) == targets) & mask
    return int(correct.sum()), int(mask.sum())


# ------------------------------------------------------------------------------------------------
# DPO
#
# Inputs are per-pair *sequence* log-probs (``sequence_logprobs``: the sum over the response's
# weighted tokens) of the policy and of the frozen reference. With
# ``h = (log pi(c) - log ref(c)) - (log pi(r) - log ref(r))``:
#
# - ``sigmoid`` (DPO, Rafailov et al. 2023): ``-log sigmoid(beta * h)``
# - ``ipo`` (Azar et al. 2023): ``(h - 1 / (2 * beta))^2``; on summed log-probs, as in the
#   paper (TRL divides by the response length first; we keep one definition for all variants)
# - ``hinge`` (SLiC, Zhao et al. 2023): ``max(0, 1 - beta * h)``
#
# The implicit rewards are ``beta * (log pi - log ref)`` of each side; ``margin`` is their
# difference (``beta * h``) and a pair counts as correct when the chosen reward is higher.

DPO_LOSSES = ("sigmoid", "ipo", "hinge")


def dpo_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair ``(loss, chosen_reward, rejected_reward)``, each shape ``(B,)``; the rewards
    are detached (metrics only)."""
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss_type == "sigmoid":
        loss = -F.logsigmoid(beta * h)
    elif loss_type == "ipo":
        loss = (h - 1.0 / (2.0 * beta)) ** 2
    elif loss_type == "hinge":
        loss = torch.relu(1.0 - beta * h)
    else:
        raise ValueError(f"unknown DPO loss {loss_type!r}: use one of {', '.join(DPO_LOSSES)}")
    chosen_reward = beta * (policy_chosen - ref_chosen).detach()
    rejected_reward = beta * (policy_rejected - ref_rejected).detach()
    return loss, chosen_reward, rejected_reward


# ------------------------------------------------------------------------------------------------
# RL (GRPO-style)


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-normalised advantages of ``rewards`` shaped ``(groups, completions)``.

    ``A = (r - mean) / (std + eps)`` within each group (``std`` with Bessel's correction, as
    TRL's GRPO). A group whose rewards are all equal carries no learning signal (every
    advantage would be 0): it is reported in ``keep`` as False so the caller skips it (and
    counts it) instead of spending a forward pass on it. Returns ``(advantages, keep)`` with
    shapes ``(G, K)`` and ``(G,)``; skipped groups have advantage 0."""
    rewards = rewards.float()
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True) if rewards.shape[-1] > 1 else torch.zeros_like(mean)
    keep = (rewards.amax(-1) > rewards.amin(-1)).view(-1)
    adv = (rewards - mean) / (std + eps)
    return torch.where(keep.unsqueeze(-1), adv, torch.zeros_like(adv)), keep


def ppo_clip_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float,
    eps_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level PPO-clip: ``-min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)``
    with ``ratio = exp(logp - old_logp)`` per token.

    ``logp``/``old_logp`` are ``(B, T)`` token log-probs under the current policy and at
    rollout time; ``advantages`` is ``(B,)`` (one per completion, broadcast over its tokens)
    or ``(B, T)``. Returns ``(per_token_loss, clipped)``: ``clipped`` marks the tokens whose
    gradient the clip removes (ratio below ``1 - eps_low`` with A < 0, or above
    ``1 + eps_high`` with A > 0). Masking and normalising are the caller's."""
    eps_high = eps_low if eps_high is None else eps_high
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped_obj = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped_obj)
    clipped = ((ratio < 1.0 - eps_low) & (adv < 0)) | ((ratio > 1.0 + eps_high) & (adv > 0))
    return loss, clipped


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference) from samples of the policy (Schulman,
    "Approximating KL divergence"): ``exp(ref - logp) - (ref - logp) - 1``; always >= 0 and
    unbiased, with lower variance than ``logp - ref``."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0
