"""Loss functions: pure functions of logits, token ids and weights (no model, no state).

Conventions shared by every recipe:

- ``weights[b, t]`` says whether token ``t`` of sample ``b`` is a training target (see
  ``data/render.py``); the logits at position ``t - 1`` predict it, so every function here
  shifts by one: ``logits[:, :-1]`` against ``input_ids[:, 1:]`` weighted by ``weights[:, 1:]``.
- Log-probabilities and cross-entropy are computed in float32 whatever the model dtype.

SFT loss (what ``recipes/sft.py`` optimises): the *summed* weighted token cross-entropy of all
micro-batches of one optimizer step divided by the number of weighted tokens in that whole
accumulated batch. Every assistant token counts the same, however the tokens are spread over
sequences and micro-batches, and gradient accumulation gives exactly the gradient of the big
batch (a mean of per-micro-batch means would not).
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
