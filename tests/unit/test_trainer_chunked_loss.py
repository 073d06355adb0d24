"""Chunked hidden-state losses against the full-logits losses of ``losses.py``.

The full path builds ``logits = hidden @ W.T`` for every position; the chunked path only for
target positions, a few at a time, recomputing in backward. Values must agree within 1e-6
relative and gradients (to the hidden states and to the output embedding) within 1e-5, for
every chunk size, including chunks that do not divide the number of targets and a batch with
no target at all.
"""

from __future__ import annotations

import pytest
import torch
from vlm_trainer import chunked_loss as cl
from vlm_trainer import losses

pytestmark = pytest.mark.unit

V, H = 37, 8


def make(seed: int = 0, weights_all_zero: bool = False):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(3, 11, H, generator=g, dtype=torch.float64) * 2).requires_grad_()
    weight = torch.randn(V, H, generator=g, dtype=torch.float64).requires_grad_()
    ids = torch.randint(0, V, (3, 11), generator=g)
    weights = (torch.rand(3, 11, generator=g) > 0.4).double()
    weights[:, 0] = 1.0  # never a target (nothing predicts position 0)
    weights[1, 3] = 0.5  # a fractional weight still counts as weighted
    if weights_all_zero:
        weights.zero_()
    return hidden, weight, ids, weights


def grads(value: torch.Tensor, hidden, weight) -> tuple[torch.Tensor, torch.Tensor]:
    gh, gw = torch.autograd.grad(value, (hidden, weight), allow_unused=False)
    return gh, gw


def close(a: torch.Tensor, b: torch.Tensor, rel: float) -> bool:
    return bool(((a - b).abs() <= rel * b.abs().clamp_min(1.0)).all())


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_sft_loss_and_grads_equal_full_logits(chunk):
    hidden, weight, ids, weights = make()
    full = losses.sft_loss(hidden @ weight.T, ids, weights, 7.0)
    chunked = cl.sft_loss(hidden, weight, ids, weights, 7.0, chunk=chunk)
    assert close(chunked, full, 1e-6)
    for a, b in zip(grads(chunked, hidden, weight), grads(full, hidden, weight), strict=True):
        assert close(a, b, 1e-5)
    _, count = cl.weighted_ce_sum(hidden, weight, ids, weights, chunk)
    assert float(count) == losses.num_target_tokens(weights)


@pytest.mark.parametrize("chunk", [2, 1000])
def test_sequence_logprobs_equal_full_logits(chunk):
    hidden, weight, ids, weights = make(1)
    full = losses.sequence_logprobs(hidden @ weight.T, ids, weights)
    chunked = cl.sequence_logprobs(hidden, weight, ids, weights, chunk)
    assert chunked.shape == full.shape == (3,)
    assert close(chunked, full, 1e-6)
    probe = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)  # a different weight per row
    ga = grads((chunked * probe).sum(), hidden, weight)
    gb = grads((full * probe).sum(), hidden, weight)
    assert all(close(a, b, 1e-5) for a, b in zip(ga, gb, strict=True))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_at_targets_equal_full_logits(temperature):
    hidden, weight, ids, weights = make(2)
    mask = weights[:, 1:]
    full = losses.token_logprobs(hidden @ weight.T / temperature, ids) * (mask > 0)
    chunked = cl.token_logprobs(hidden, weight, ids, weights, 1 / temperature, chunk=3)
    assert chunked.shape == full.shape
    assert close(chunked, full, 1e-6)
    probe = torch.randn(full.shape, generator=torch.Generator().manual_seed(5)).double()
    ga = grads((chunked * probe * mask).sum(), hidden, weight)
    gb = grads((full * probe * mask).sum(), hidden, weight)
    assert all(close(a, b, 1e-5) for a, b in zip(ga, gb, strict=True))


def test_accuracy_equals_full_logits():
    hidden, weight, ids, weights = make(3)
    ids[0, 5] = int((hidden[0, 4] @ weight.T).argmax())  # at least one correct prediction
    weights[0, 5] = 1.0
    full = losses.weighted_token_accuracy(hidden @ weight.T, ids, weights)
    assert cl.weighted_token_accuracy(hidden, weight, ids, weights, chunk=2) == full
    assert full[0] >= 1


def test_no_targets_still_gives_zero_gradients():
    """A rank whose rows all weigh 0 (a distributed stand-in) must still produce a gradient
    tensor for the output embedding: DDP and FSDP reduce it on every rank."""
    hidden, weight, ids, weights = make(4, weights_all_zero=True)
    loss = cl.sft_loss(hidden, weight, ids, weights, 1.0)
    assert float(loss.detach()) == 0.0
    gh, gw = grads(loss, hidden, weight)
    assert gw is not None and not gw.any() and not gh.any()


def test_auto_chunk_bounds_the_logits():
    assert cl.auto_chunk(151_936) * 151_936 <= cl.CHUNK_ELEMENTS
    assert cl.auto_chunk(151_936) >= 1 and cl.auto_chunk(10**9) == 1
    assert cl.auto_chunk(151_936, "cuda") * 151_936 <= cl.CUDA_CHUNK_ELEMENTS
