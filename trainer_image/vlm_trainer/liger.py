"""Optional: Liger Kernel's fused linear cross-entropy for the SFT loss on CUDA.

``pip install 'vlm-trainer-operator[gpu]'`` brings ``liger-kernel`` (Triton kernels; CUDA only).
``available(device)`` says whether it can run; ``weighted_ce_sum`` is a drop-in for
``chunked_loss.weighted_ce_sum`` at the same target positions (the projection, softmax and
gradient fused in Triton, chunked inside the kernel). It is used where the weights of the
targets are all 1 (what ``data/render.py`` writes), since Liger weighs classes, not tokens;
anything else, DPO's and RL's per-token log-probs, and the CPU use the torch path of
``chunked_loss.py``, which is the reference the tests compare against.

Not exercised by the CPU test suite (the kernels need a GPU): ``benchmarks/gpu_qwen3vl_8b.py
--liger`` is where it runs, next to the torch path's numbers.
"""

from __future__ import annotations

import importlib.util

import torch

from .chunked_loss import target_positions


def available(device: torch.device | str) -> bool:
    """Liger is installed and ``device`` is CUDA."""
    if torch.device(device).type != "cuda":
        return False
    return importlib.util.find_spec("liger_kernel") is not None


def weighted_ce_sum(
    hidden: torch.Tensor, weight: torch.Tensor, input_ids: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of CE over the targets, number of targets)``; every target's weight must be 1."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    rows, cols = target_positions(weights)
    w = weights[rows, cols + 1]
    if not bool((w == 1).all()):
        raise ValueError("the Liger loss weighs every target 1; use chunked_loss for others")
    out = liger_fused_linear_cross_entropy(
        hidden[rows, cols], weight, input_ids[rows, cols + 1], reduction="sum"
    )
    loss = out[0] if isinstance(out, tuple) else out  # some versions also return a z-loss
    return loss.float(), w.float().sum()
