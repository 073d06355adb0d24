"""Losses against plain reference computations (explicit loops, float64, math.log)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from vlm_trainer.losses import (
    num_target_tokens,
    sequence_logprobs,
    sft_loss,
    token_logprobs,
    weighted_ce_sum,
    weighted_token_accuracy,
)
from vlm_trainer.recipes.sft import lr_factor

pytestmark = pytest.mark.unit


def reference_nll(logits, ids, weights):
    """sum_w -log softmax(logits[b, t-1])[ids[b, t]] and sum_w, token by token in float64."""
    total = count = 0.0
    for b in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            w = float(weights[b, t])
            if w == 0:
                continue
            row = [float(x) for x in logits[b, t - 1]]
            m = max(row)
            logz = m + math.log(sum(math.exp(x - m) for x in row))
            total += w * (logz - row[int(ids[b, t])])
            count += w
    return total, count


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 17, generator=g) * 3
    ids = torch.randint(0, 17, (3, 9), generator=g)
    weights = (torch.rand(3, 9, generator=g) > 0.5).float()
    weights[:, 0] = 1.0  # position 0 is never a target: must be ignored by the shift
    return logits, ids, weights


def test_weighted_ce_matches_reference(batch):
    logits, ids, weights = batch
    total, count = weighted_ce_sum(logits, ids, weights)
    ref_total, ref_count = reference_nll(logits, ids, weights)
    assert abs(float(total) - ref_total) < 1e-4 * max(1.0, ref_total)
    assert float(count) == ref_count == num_target_tokens(weights)
    assert abs(float(sft_loss(logits, ids, weights, count)) - ref_total / ref_count) < 1e-6


def test_accumulated_micro_batches_equal_one_big_batch(batch):
    """Summing each micro-batch's share (divided by the whole batch's token count) gives the
    big batch's mean token loss, and the same gradient."""
    logits, ids, weights = batch
    big = logits.clone().requires_grad_(True)
    sft_loss(big, ids, weights, num_target_tokens(weights)).backward()
    parts = [logits[i : i + 1].clone().requires_grad_(True) for i in range(3)]
    denom = sum(num_target_tokens(weights[i : i + 1]) for i in range(3))
    total = sum(sft_loss(p, ids[i : i + 1], weights[i : i + 1], denom) for i, p in enumerate(parts))
    total.backward()
    ref_total, ref_count = reference_nll(logits, ids, weights)
    assert abs(float(total.detach()) - ref_total / ref_count) < 1e-6
    assert torch.allclose(torch.cat([p.grad for p in parts]), big.grad, atol=1e-7)


def test_sequence_and_token_logprobs(batch):
    logits, ids, weights = batch
    lp = token_logprobs(logits, ids)
    assert lp.shape == (3, 8)
    ref = torch.log_softmax(logits.double(), -1)[0, 2, ids[0, 3]]
    assert abs(float(lp[0, 2]) - float(ref)) < 1e-6
    seq = sequence_logprobs(logits, ids, weights)
    for b in range(3):
        ref_total, _ = reference_nll(logits[b : b + 1], ids[b : b + 1], weights[b : b + 1])
        assert abs(float(seq[b]) + ref_total) < 1e-4


def test_weighted_token_accuracy():
    logits = torch.zeros(1, 4, 5)
    ids = torch.tensor([[0, 1, 2, 3]])
    logits[0, 0, 1] = logits[0, 1, 4] = logits[0, 2, 3] = 5.0  # right, wrong, right
    assert weighted_token_accuracy(logits, ids, torch.tensor([[0.0, 1, 1, 1]])) == (2, 3)
    assert weighted_token_accuracy(logits, ids, torch.tensor([[0.0, 0, 1, 0]])) == (0, 1)


def test_lr_schedules():
    # warmup 2 of 10 steps, then cosine to 10% of peak
    f = [lr_factor(s, 10, 2, "cosine", 0.1) for s in range(10)]
    assert f[:2] == [0.5, 1.0] and f[2] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(f[2:]))
    assert abs(lr_factor(10, 10, 2, "cosine", 0.1) - 0.1) < 1e-12
    assert lr_factor(6, 10, 2, "linear", 0.0) == 0.5
    assert lr_factor(9, 10, 0, "constant", 0.0) == 1.0
