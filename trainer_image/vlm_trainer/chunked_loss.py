"""Losses on the last hidden state: token log-probs against the output embedding, in chunks.

The full-logits losses of ``losses.py`` need a ``(B, L, V)`` tensor (and a float32 copy, and its
gradient): at 65,536 tokens and Qwen3-VL's 151,936-token vocabulary that is tens of GB, almost
all of it for positions that are not targets (image and prompt tokens weigh 0). Here:

1. only *target* positions are kept: the hidden state at ``t - 1`` for every token ``t`` with
   ``weights[b, t] > 0`` (the same shift as ``losses.shifted``), as ``(rows, cols)`` indices;
2. their log-probs are computed ``chunk`` positions at a time (``logits = h @ W.T * scale`` in
   the weight's dtype, then float32, as ``model(...).logits.float()`` would be), and backward
   *recomputes* each chunk's logits instead of saving them. Peak memory for the loss is
   O(chunk x vocab), whatever the sequence length; what is saved for backward is the selected
   hidden states (N x hidden) and the targets.

The functions mirror ``losses.py`` (same names, same values within float rounding) with
``(hidden, weight)`` in place of ``logits``; ``hidden`` is the model's last hidden state
``(B, L, H)`` and ``weight`` its output embedding ``(V, H)`` (``head.py`` gets both from a
model). Everything here is pure: tensors in, tensors out. ``scale`` multiplies the logits (RL
uses ``1 / temperature``). A model with a bias or a logit soft-cap on its head is not
supported (the Qwen-VL models have neither).

Packed rows (several samples in one row) need nothing more: a sample's first token is never a
target (weight 0: it is ``<|im_start|>``), so no target is predicted across a sample boundary.

``chunk`` (positions per chunk) defaults to ``auto_chunk(V, device)``: about 2**22 logits
(16 MiB of float32) per chunk on CPU, so 27 positions at V = 151,936 and the whole batch for the
tiny model's small vocabulary; 2**26 (256 MiB, 441 positions) on CUDA, where a matmul needs a
few hundred rows to run at speed (``memory_model.py`` counts this chunk).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

CHUNK_ELEMENTS = 2**22
CUDA_CHUNK_ELEMENTS = 2**26


def auto_chunk(vocab_size: int, device: torch.device | str = "cpu") -> int:
    """Positions per chunk so that one chunk's logits hold about 2**22 values (2**26 on CUDA)."""
    elements = CUDA_CHUNK_ELEMENTS if torch.device(device).type == "cuda" else CHUNK_ELEMENTS
    return max(1, elements // max(vocab_size, 1))


def target_positions(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, cols)`` of the hidden states that predict a target: ``weights[b, t] > 0`` gives
    ``(b, t - 1)``. Row-major order (sample by sample, left to right)."""
    rows, cols = (weights[:, 1:] > 0).nonzero(as_tuple=True)
    return rows, cols


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    logits = (h @ weight.T).float()  # the model's dtype, then float32, as the full path
    return logits.mul_(scale) if scale != 1.0 else logits


def _chunked_logits(
    h: torch.Tensor, weight: torch.Tensor, scale: float, chunk: int
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Each chunk of ``h``'s rows, as a slice, with its float32 logits. The logits are yielded,
    never kept here, so only the caller's current chunk is alive: O(chunk x vocab) memory."""
    for s in range(0, h.shape[0], chunk):
        part = slice(s, s + chunk)
        yield part, _chunk_logits(h[part], weight, scale)


class ChunkedLogprobs(torch.autograd.Function):
    """``log_softmax(h @ W.T * scale)[i, targets[i]]`` for ``h`` ``(N, H)``, float32 ``(N,)``.

    Backward recomputes each chunk's logits: ``d logp / d logits = onehot - softmax``. The
    weight's gradient is accumulated in float32 over the chunks and is a tensor (zeros) even
    when ``N == 0``, so DDP and FSDP see a gradient on every rank."""

    @staticmethod
    def forward(ctx, h, weight, targets, scale: float, chunk: int):
        out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        for part, logits in _chunked_logits(h, weight, scale, chunk):
            picked = logits.gather(-1, targets[part].unsqueeze(-1)).squeeze(-1)
            out[part] = picked - torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(h, weight, targets)
        ctx.scale, ctx.chunk = scale, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        h, weight, targets = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for part, logits in _chunked_logits(h, weight, ctx.scale, ctx.chunk):
            hc, g = h[part], grad_out[part].float()
            probs = logits.sub_(torch.logsumexp(logits, -1, keepdim=True)).exp_()  # in place
            # dlogits = g * (onehot(target) - softmax), times d logits / d (h @ W.T) = scale.
            dlogits = probs.mul_(-g.unsqueeze(-1))
            dlogits.scatter_add_(-1, targets[part].unsqueeze(-1), g.unsqueeze(-1))
            if ctx.scale != 1.0:
                dlogits.mul_(ctx.scale)
            dlogits = dlogits.to(weight.dtype)
            if need_h:
                grad_h[part] = dlogits @ weight
            if need_w:
                grad_w += (dlogits.T @ hc).float()
        return grad_h, grad_w.to(weight.dtype) if need_w else None, None, None, None


def selected_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    input_ids: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    scale: float = 1.0,
    chunk: int | None = None,
) -> torch.Tensor:
    """Log-probs ``(N,)`` of the tokens ``input_ids[rows, cols + 1]`` given the hidden states
    ``hidden[rows, cols]`` (see ``target_positions``)."""
    chunk = chunk or auto_chunk(weight.shape[0], hidden.device)
    h = hidden[rows, cols]
    targets = input_ids[rows, cols + 1]
    return ChunkedLogprobs.apply(h, weight, targets, float(scale), int(chunk))


def weighted_ce_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    input_ids: torch.Tensor,
    weights: torch.Tensor,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_t w_t * CE_t, sum_t w_t)``, float32 scalars (``losses.weighted_ce_sum``)."""
    rows, cols = target_positions(weights)
    logp = selected_logprobs(hidden, weight, input_ids, rows, cols, chunk=chunk)
    w = weights[rows, cols + 1].float()
    return -(logp * w).sum(), w.sum()


def sft_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    input_ids: torch.Tensor,
    weights: torch.Tensor,
    num_weighted_tokens: float | torch.Tensor,
    chunk: int | None = None,
) -> torch.Tensor:
    """This micro-batch's share of the SFT loss (``losses.sft_loss``)."""
    total, _ = weighted_ce_sum(hidden, weight, input_ids, weights, chunk)
    return total / max(float(num_weighted_tokens), 1.0)


def sequence_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    input_ids: torch.Tensor,
    weights: torch.Tensor,
    chunk: int | None = None,
) -> torch.Tensor:
    """Per-sample sum of the weighted tokens' log-probs, ``(B,)`` (``losses.sequence_logprobs``;
    DPO)."""
    rows, cols = target_positions(weights)
    logp = selected_logprobs(hidden, weight, input_ids, rows, cols, chunk=chunk)
    out = torch.zeros(weights.shape[0], dtype=torch.float32, device=logp.device)
    return out.index_add(0, rows, logp * weights[rows, cols + 1].float())


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    input_ids: torch.Tensor,
    weights: torch.Tensor,
    scale: float = 1.0,
    chunk: int | None = None,
) -> torch.Tensor:
    """``(B, L-1)`` log-probs of the next tokens at the target positions, 0 elsewhere (RL: the
    caller masks with ``weights[:, 1:]``, so only the targets' values are ever used)."""
    rows, cols = target_positions(weights)
    logp = selected_logprobs(hidden, weight, input_ids, rows, cols, scale, chunk)
    out = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1, device=logp.device)
    return out.index_put((rows, cols), logp)


@torch.no_grad()
def weighted_token_accuracy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    input_ids: torch.Tensor,
    weights: torch.Tensor,
    chunk: int | None = None,
) -> tuple[int, int]:
    """``(correct, total)`` greedy next-token predictions over the weighted tokens (eval)."""
    rows, cols = target_positions(weights)
    chunk = chunk or auto_chunk(weight.shape[0], hidden.device)
    h, targets = hidden[rows, cols], input_ids[rows, cols + 1]
    correct = 0
    for part, logits in _chunked_logits(h, weight, 1.0, chunk):
        correct += int((logits.argmax(-1) == targets[part]).sum())
    return correct, int(h.shape[0])
