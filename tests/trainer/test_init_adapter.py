"""Starting a full fine-tune from a LoRA checkpoint (``init_adapter``, what spec.initFrom of a
LoRA Checkpoint renders): the adapter is merged into the base before the first step, so the
first step's loss is the trained model's, not the base model's."""

from __future__ import annotations

import pytest
from vlm_trainer import checkpoint as ckpt

from tests.trainer.helpers import read_jsonl, run_cli, write_config

pytestmark = [pytest.mark.trainer, pytest.mark.slow]


def first_loss(log) -> float:
    return next(m["loss"] for m in read_jsonl(log / "metrics.jsonl") if m["event"] == "train")


def test_full_run_starts_from_the_merged_lora_checkpoint(tmp_path, tiny_model, demo_data):
    lines = (demo_data / "sft_train.jsonl").read_text().splitlines()[:16]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    common = dict(base_model=tiny_model, dataset=tmp_path / "train.jsonl", max_seq_len=256,
                  batch_size=4, epochs=10, seed=1, num_threads=2)  # fmt: skip
    lora = write_config(tmp_path / "lora.yaml", **common, log_path=tmp_path / "lora",
                        lora_rank=8, learning_rate=0.01, max_steps=12)  # fmt: skip
    out = run_cli("sft", "--config", str(lora), timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    adapter = tmp_path / "lora" / "checkpoints" / ckpt.FINAL
    assert (adapter / "adapter_config.json").exists()

    full = write_config(tmp_path / "full.yaml", **common, log_path=tmp_path / "full",
                        init_adapter=adapter, learning_rate=1e-4, max_steps=1)  # fmt: skip
    out = run_cli("sft", "--config", str(full), timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    # The same seed gives both runs the same first batch; a fresh adapter is the identity, so
    # the LoRA run's first loss is the base model's loss on it.
    lora_losses = [m["loss"] for m in read_jsonl(tmp_path / "lora" / "metrics.jsonl")
                   if m["event"] == "train"]  # fmt: skip
    base, merged = lora_losses[0], first_loss(tmp_path / "full")
    last_epoch = sum(lora_losses[-4:]) / 4  # 16 records at batch 4: the last 4 steps, one epoch
    print(f"\nfirst-step loss: base {base:.3f}, from the merged LoRA checkpoint {merged:.3f}, "
          f"LoRA run's last epoch {last_epoch:.3f}")  # fmt: skip
    assert merged < base - 0.5  # not the base model
    assert abs(merged - last_epoch) < 0.3  # the trained one, merged whole
    manifest = ckpt.read_manifest(tmp_path / "full" / "checkpoints" / ckpt.FINAL)
    assert manifest["type"] == "full" and manifest["init_adapter"] == str(adapter)
