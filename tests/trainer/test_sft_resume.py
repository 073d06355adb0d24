"""Exact resume: SIGKILL after a checkpoint (or in the middle of writing one), restart, and the
final weights are bit-identical (``torch.equal``) to a run that was never interrupted."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import load_file
from vlm_trainer import checkpoint as ckpt

from tests.trainer.helpers import read_jsonl, run_cli, write_config

pytestmark = [pytest.mark.trainer, pytest.mark.slow]


@pytest.fixture(scope="module")
def small_data(demo_data, tmp_path_factory):
    """40 training records: 5 steps per epoch at batch 4 x accumulation 2."""
    out = tmp_path_factory.mktemp("resume-data")
    lines = (demo_data / "sft_train.jsonl").read_text().splitlines()[:40]
    (out / "train.jsonl").write_text("\n".join(lines) + "\n")
    evals = (demo_data / "sft_eval.jsonl").read_text().splitlines()[:8]
    (out / "eval.jsonl").write_text("\n".join(evals) + "\n")
    return out


def config(tmp_path, name, tiny_model, data, **extra):
    log = tmp_path / name
    cfg = dict(job_name=name, base_model=tiny_model, dataset=data / "train.jsonl",
               eval_dataset=data / "eval.jsonl", log_path=log, max_seq_len=256, epochs=2,
               batch_size=4, gradient_accumulation_steps=2, learning_rate=2e-3,
               warmup_steps=2, weight_decay=0.01, save_every_steps=3, keep_last=2, seed=3,
               num_threads=1)  # fmt: skip
    cfg.update(extra)
    return write_config(tmp_path / f"{name}.yaml", **cfg), log / "checkpoints"


def weights(final, lora=False):
    return load_file(final / ("adapter_model.safetensors" if lora else "model.safetensors"))


def assert_same_weights(a, b):
    assert a.keys() == b.keys() and a
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def train_losses(log_dir):
    return [(m["step"], m["loss"]) for m in read_jsonl(log_dir / "metrics.jsonl")
            if m["event"] == "train"]  # fmt: skip


def run_ok(cfg, **env):
    out = run_cli("sft", "--config", str(cfg), env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_sigkill_after_checkpoint_then_resume_is_exact(tmp_path, tiny_model, small_data):
    cfg_a, root_a = config(tmp_path, "uninterrupted", tiny_model, small_data)
    run_ok(cfg_a)

    cfg_b, root_b = config(tmp_path, "killed", tiny_model, small_data)
    killed = run_cli("sft", "--config", str(cfg_b), env={"VLM_TRAINER_FAULT": "after_checkpoint:6"})
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for _, p in ckpt.list_steps(root_b)] == ["step-000003", "step-000006"]
    assert not (root_b / "final").exists()
    resumed = run_ok(cfg_b)
    assert "resumed from" in resumed.stderr and "step-000006" in resumed.stderr

    assert_same_weights(weights(root_a / "final"), weights(root_b / "final"))
    # The same losses, step for step, and each step logged once despite the restart.
    assert train_losses(root_a.parent) == train_losses(root_b.parent)
    assert [s for s, _ in train_losses(root_b.parent)] == list(range(1, 11))

    manifest = json.loads((root_b / "final" / "manifest.json").read_text())
    assert (manifest["job"], manifest["step"], manifest["type"]) == ("killed", 10, "full")
    assert manifest["base_model"] == str(tiny_model) and "eval_loss" in manifest["metrics"]
    assert "model.safetensors" in manifest["files"] and "tokenizer.json" in manifest["files"]
    # keep_last=2 pruned step-3; the final checkpoint verifies.
    assert [p.name for _, p in ckpt.list_steps(root_b)] == ["step-000006", "step-000009"]
    assert ckpt.verify(root_b / "final") is None

    # A pod restarted after the job finished does nothing and succeeds.
    again = run_ok(cfg_b)
    assert '"already_complete": true' in again.stdout


def test_kill_during_checkpoint_write_leaves_nothing_that_looks_whole(
    tmp_path, tiny_model, small_data
):
    cfg_a, root_a = config(tmp_path, "uninterrupted", tiny_model, small_data)
    run_ok(cfg_a)

    cfg_b, root_b = config(tmp_path, "torn", tiny_model, small_data)
    fault = {"VLM_TRAINER_FAULT": "during_checkpoint:6"}
    killed = run_cli("sft", "--config", str(cfg_b), env=fault)
    assert killed.returncode == -signal.SIGKILL
    partial = [p for p in root_b.iterdir() if p.name.startswith(".tmp-step-000006")]
    assert len(partial) == 1 and (partial[0] / "model.safetensors").exists()  # half written
    assert not (root_b / "step-000006").exists()
    assert ckpt.latest_verified(root_b) == root_b / "step-000003"

    resumed = run_ok(cfg_b)
    assert "step-000003" in resumed.stderr
    assert not [p for p in root_b.iterdir() if p.name.startswith(".tmp-")]
    assert_same_weights(weights(root_a / "final"), weights(root_b / "final"))


def test_lora_with_gradient_checkpointing_resumes_exactly(tmp_path, tiny_model, small_data):
    extra = dict(lora_rank=4, lora_alpha=8, gradient_checkpointing=True, learning_rate=5e-3)
    cfg_a, root_a = config(tmp_path, "lora", tiny_model, small_data, **extra)
    run_ok(cfg_a)
    cfg_b, root_b = config(tmp_path, "lora-killed", tiny_model, small_data, **extra)
    killed = run_cli("sft", "--config", str(cfg_b), env={"VLM_TRAINER_FAULT": "after_checkpoint:3"})
    assert killed.returncode == -signal.SIGKILL
    run_ok(cfg_b)

    final = root_b / "final"
    assert (final / "adapter_config.json").exists() and not (final / "model.safetensors").exists()
    assert json.loads((final / "manifest.json").read_text())["type"] == "lora"
    a, b = weights(root_a / "final", lora=True), weights(final, lora=True)
    assert_same_weights(a, b)
    assert not any("visual" in k for k in a)  # adapters only on the language model
    # The adapter checkpoint is usable for generation (base model from the manifest).
    ev = run_cli("eval", "--model", str(final), "--data", str(small_data / "eval.jsonl"))
    assert ev.returncode == 0 and json.loads(ev.stdout)["records"] == 8, ev.stderr[-2000:]
