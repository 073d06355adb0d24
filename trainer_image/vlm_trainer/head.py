"""The model's last hidden state and its output embedding, without the full-vocabulary logits.

``forward_hidden(model, inputs)`` runs the model as the recipes always do (through DDP's
wrapper, FSDP2's root hooks, peft's ``PeftModel``), but with the output head's forward replaced,
for that one call, by the identity: the model's ``logits`` output is then its last hidden state
``(B, L, H)``, and no ``(B, L, V)`` tensor is ever made. ``chunked_loss.py`` turns hidden states
and ``head_weight(model)`` into log-probs at the target positions only.

Why patch the head instead of calling the inner language model: the wrappers' hooks live on
the outer module (DDP's gradient reducer, FSDP2's root all-gather and lazy init, peft's adapter
switching), and the Qwen-VL forward (image features, deepstack, mRoPE positions) stays the
model's own code.

Supported: heads that are a plain ``nn.Linear`` without bias (Qwen2-VL, Qwen2.5-VL, Qwen3-VL,
tied or not), not adapted by LoRA. Under FSDP2 the head belongs to the root unit, whose
parameters stay unsharded from its forward until its gradients are reduced after backward
(the root does not reshard after forward), so the weight used for the loss is the same
unsharded tensor the forward used and its gradient is reduced with the root's; a weight
found sharded (a ``DTensor``, e.g. outside a forward) is gathered with ``full_tensor()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (FSDP2 and peft keep the model's own attributes)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def output_head(model: torch.nn.Module) -> torch.nn.Linear:
    head = unwrap(model).get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        raise TypeError(f"hidden-state losses need a bias-free nn.Linear head, not {type(head)}")
    return head


def head_weight(model: torch.nn.Module) -> torch.Tensor:
    """The output embedding ``(V, H)`` as a tensor the loss can use (gathered if sharded)."""
    w = output_head(model).weight
    full_tensor = getattr(w, "full_tensor", None)  # a DTensor: FSDP2 outside the root forward
    return full_tensor() if full_tensor is not None else w


@contextlib.contextmanager
def identity_head(model: torch.nn.Module) -> Iterator[torch.nn.Linear]:
    """Within the block, the output head returns its input (an instance attribute shadows
    ``Linear.forward``; removed again on exit, also on errors)."""
    head = output_head(model)
    head.forward = _identity
    try:
        yield head
    finally:
        del head.forward


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def forward_hidden(model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hidden, weight)``: the last hidden state ``(B, L, H)`` of ``model(**inputs)`` and the
    output embedding ``(V, H)``."""
    with identity_head(model):
        # No KV cache in a training forward: transformers only detects packed rows (positions
        # restarting per sample) without one, and the cache is wasted memory anyway.
        hidden = model(**inputs, use_cache=False).logits
    return hidden, head_weight(model)
