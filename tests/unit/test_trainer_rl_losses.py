"""DPO and RL losses against values computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch
from vlm_trainer.losses import dpo_losses, group_advantages, k3_kl, ppo_clip_token_loss

pytestmark = pytest.mark.unit

# Two pairs, beta = 0.5. h = (pi_c - ref_c) - (pi_r - ref_r):
#   pair 0: (-1 + 2) - (-3 + 2.5) = 1 - (-0.5) = 1.5   -> beta * h = 0.75
#   pair 1: (-2 + 2) - (-1 + 2)   = 0 - 1      = -1    -> beta * h = -0.5
PAIRS = dict(
    policy_chosen=torch.tensor([-1.0, -2.0]),
    policy_rejected=torch.tensor([-3.0, -1.0]),
    ref_chosen=torch.tensor([-2.0, -2.0]),
    ref_rejected=torch.tensor([-2.5, -2.0]),
    beta=0.5,
)


@pytest.mark.parametrize(
    "loss_type,expected",
    [
        # -log sigmoid(x) = log(1 + e^-x)
        ("sigmoid", [math.log(1 + math.exp(-0.75)), math.log(1 + math.exp(0.5))]),
        # (h - 1 / (2 beta))^2 = (h - 1)^2
        ("ipo", [(1.5 - 1) ** 2, (-1 - 1) ** 2]),
        # max(0, 1 - beta h)
        ("hinge", [1 - 0.75, 1 + 0.5]),
    ],
)
def test_dpo_variants(loss_type, expected):
    loss, chosen, rejected = dpo_losses(**PAIRS, loss_type=loss_type)
    assert loss.tolist() == pytest.approx(expected, abs=1e-6)
    # Implicit rewards beta * (pi - ref): chosen 0.5, 0; rejected -0.25, 0.5.
    assert chosen.tolist() == pytest.approx([0.5, 0.0])
    assert rejected.tolist() == pytest.approx([-0.25, 0.5])
    assert ((chosen > rejected).float().mean()) == 0.5  # preference accuracy


def test_dpo_gradient_pushes_chosen_up_and_rejected_down():
    pc = PAIRS["policy_chosen"].clone().requires_grad_(True)
    pr = PAIRS["policy_rejected"].clone().requires_grad_(True)
    loss, _, _ = dpo_losses(pc, pr, PAIRS["ref_chosen"], PAIRS["ref_rejected"], 0.5)
    loss.sum().backward()
    # d/dpc [-log sigmoid(beta h)] = -beta * sigmoid(-beta h)
    expected = [-0.5 / (1 + math.exp(0.75)), -0.5 / (1 + math.exp(-0.5))]
    assert pc.grad.tolist() == pytest.approx(expected, abs=1e-6)
    assert pr.grad.tolist() == pytest.approx([-g for g in expected], abs=1e-6)


def test_dpo_unknown_variant():
    with pytest.raises(ValueError, match="unknown DPO loss 'kto'"):
        dpo_losses(**PAIRS, loss_type="kto")


def test_group_advantages_skip_zero_variance_groups():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [1.0, 0.0, 0.0, 0.0]])
    adv, keep = group_advantages(rewards, eps=1e-4)
    assert keep.tolist() == [True, False, True]
    # group 0: mean 0.5, sample std sqrt(4 * 0.25 / 3) = sqrt(1/3)
    s0 = math.sqrt(1 / 3) + 1e-4
    assert adv[0].tolist() == pytest.approx([0.5 / s0, -0.5 / s0, -0.5 / s0, 0.5 / s0])
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # skipped: no signal
    # group 2: mean 0.25, sample std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    s2 = 0.5 + 1e-4
    assert adv[2].tolist() == pytest.approx([0.75 / s2, -0.25 / s2, -0.25 / s2, -0.25 / s2])
    assert adv[keep].sum(-1).abs().max() < 1e-6  # zero mean within each kept group


def test_ppo_clip_both_sides():
    # Ratios exp(logp - old): 1.5, 0.5, 0.5, 1.5, 1.25; eps_low 0.2, eps_high 0.28.
    ratios = torch.tensor([[1.5, 0.5, 0.5, 1.5, 1.25]])
    old = torch.full_like(ratios, -2.0)
    logp = (old + ratios.log()).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0]])
    loss, clipped = ppo_clip_token_loss(logp, old, adv, eps_low=0.2, eps_high=0.28)
    # -min(r A, clip(r, 0.8, 1.28) A):
    #   r=1.5  A=+1: min(1.5, 1.28)    = 1.28  -> -1.28, clipped above
    #   r=0.5  A=-1: min(-0.5, -0.8)   = -0.8  ->  0.8,  clipped below
    #   r=0.5  A=+1: min(0.5, 0.8)     = 0.5   -> -0.5,  not clipped (the min keeps r A)
    #   r=1.5  A=-1: min(-1.5, -1.28)  = -1.5  ->  1.5,  not clipped
    #   r=1.25 A=+1: min(1.25, 1.25)   = 1.25  -> -1.25, inside the high range
    assert loss[0].tolist() == pytest.approx([-1.28, 0.8, -0.5, 1.5, -1.25], abs=1e-6)
    assert clipped[0].tolist() == [True, True, False, False, False]
    loss.sum().backward()
    # Clipped tokens get no gradient; the others d(-r A)/dlogp = -r A.
    assert logp.grad[0].tolist() == pytest.approx([0.0, 0.0, -0.5, 1.5, -1.25], abs=1e-6)

    # Symmetric clipping (eps_high defaults to eps_low): r = 1.25 > 1.2 is now clipped.
    loss, clipped = ppo_clip_token_loss(logp.detach(), old, adv[0], eps_low=0.2)
    assert loss.shape == (5, 5)  # a (B,) advantage broadcasts over tokens
    loss, clipped = ppo_clip_token_loss(logp.detach(), old, adv, eps_low=0.2)
    assert loss[0, 4].item() == pytest.approx(-1.2) and clipped[0].tolist()[4]


def test_ppo_on_policy_is_the_policy_gradient():
    """At ratio 1 (one update per rollout) the loss is -A and its gradient -A d logp."""
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, clipped = ppo_clip_token_loss(logp, logp.detach(), torch.tensor([2.0]), 0.2)
    assert loss.tolist() == [[-2.0, -2.0]] and not clipped.any()
    loss.sum().backward()
    assert logp.grad.tolist() == [[-2.0, -2.0]]


def test_k3_kl():
    logp = torch.tensor([-1.0, -1.5, -2.0])
    ref = torch.tensor([-2.0, -1.5, -1.0])
    # d = ref - logp = -1, 0, 1  ->  e^d - d - 1 = e^-1, 0, e - 2
    assert k3_kl(logp, ref).tolist() == pytest.approx([math.exp(-1), 0.0, math.e - 2], abs=1e-6)
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()
