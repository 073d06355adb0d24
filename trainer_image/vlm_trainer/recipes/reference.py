"""The frozen reference policy of DPO and of RL's KL penalty.

- Full fine-tuning: a second copy of the *starting* weights, loaded from ``base_model`` (not
  copied from the policy: a resumed policy already holds trained weights), in eval mode, with
  no gradients. It costs one more model in memory; DPO's ``cache_reference_logprobs`` avoids
  keeping it.
- LoRA: the policy itself with its adapters disabled (``peft``'s ``disable_adapter``), which is
  exactly the base model; no second copy.

Reference forward passes always run under ``torch.no_grad``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..model import load_model


class Reference:
    def __init__(self, policy, cfg, dtype: torch.dtype, device: torch.device):
        self.policy = policy
        self.frozen = None
        if not cfg.lora_rank:
            self.frozen = load_model(cfg.base_model, dtype, device)
            self.frozen.config.use_cache = False
            self.frozen.eval().requires_grad_(False)

    @contextmanager
    def model(self) -> Iterator:
        """The reference model to call, valid inside the ``with`` block."""
        with torch.no_grad():
            if self.frozen is not None:
                yield self.frozen
            else:
                with self.policy.disable_adapter():
                    yield self.policy

    def release(self) -> None:
        """Drop the frozen copy (after DPO's cached first pass)."""
        self.frozen = None
        self.policy = None
