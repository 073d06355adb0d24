"""The recipe's loss on a real batch of the tiny model equals a plain reference computation,
and ``freeze_vision`` leaves the vision tower untouched."""

from __future__ import annotations

import math
import time

import pytest
import torch
from safetensors.torch import load_file
from vlm_trainer.config import SFTConfig
from vlm_trainer.data.collate import model_inputs
from vlm_trainer.recipes import sft

pytestmark = pytest.mark.trainer


def make_cfg(tmp_path, tiny_model, demo_data, **extra):
    return SFTConfig(base_model=str(tiny_model), dataset=str(demo_data / "sft_eval.jsonl"),
                     log_path=str(tmp_path / "log"), batch_size=3, gradient_accumulation_steps=2,
                     max_seq_len=256, learning_rate=1e-3, **extra)  # fmt: skip


def reference_loss(model, micro) -> float:
    """Mean over all weighted tokens of all micro-batches of -log p(token), by explicit loops."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in micro:
            logits = model(**model_inputs(batch, "cpu")).logits.double()
            ids, w = batch["input_ids"], batch["weights"]
            for b in range(ids.shape[0]):
                for t in range(1, ids.shape[1]):
                    if w[b, t]:
                        logp = torch.log_softmax(logits[b, t - 1], -1)[ids[b, t]]
                        total -= float(logp)
                        count += 1
    return total / count


def test_step_loss_equals_reference(tmp_path, tiny_model, demo_data):
    recipe = sft.SFTRecipe(make_cfg(tmp_path, tiny_model, demo_data))
    assert recipe.setup()
    micro = recipe.next_batches(recipe.stream.samples(0))
    assert len(micro) == 2 and [b["input_ids"].shape[0] for b in micro] == [3, 3]
    # The micro-batches hold different numbers of target tokens, so a mean of per-batch
    # means would differ from the token mean the recipe promises.
    assert len({float(b["weights"][:, 1:].sum()) for b in micro}) == 2
    ref = reference_loss(recipe.model, micro)
    metrics = recipe.train_step(micro, time.perf_counter())
    assert math.isfinite(ref) and abs(metrics["loss"] - ref) < 1e-6, (metrics["loss"], ref)
    assert metrics["target_tokens"] == sum(int(b["weights"][:, 1:].sum()) for b in micro)


def test_freeze_vision(tmp_path, tiny_model, demo_data):
    cfg = make_cfg(tmp_path, tiny_model, demo_data, freeze_vision=True, max_steps=2)
    summary = sft.main(cfg)
    before = load_file(tiny_model / "model.safetensors")
    after = load_file(f"{summary['final_checkpoint']}/model.safetensors")
    visual = [k for k in before if ".visual." in k]
    assert visual and all(torch.equal(before[k], after[k]) for k in visual)
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])
