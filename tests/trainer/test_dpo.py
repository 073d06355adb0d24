"""DPO on the tiny model: it learns which answer the image supports; references; exact resume.

The demo pairs (``demo_data.py``) share the prompt and the image; chosen names the image's
colour and rejected another one, so the two differ only in what they say about the image.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
import torch
from vlm_trainer import checkpoint as ckpt

from tests.trainer.helpers import read_jsonl, run_cli, write_config
from tests.trainer.test_sft_resume import assert_same_weights, weights

pytestmark = pytest.mark.trainer


def dpo_config(tmp_path, name, tiny_model, train, eval_=None, **extra):
    cfg = dict(job_name=name, base_model=tiny_model, dataset=train, log_path=tmp_path / name,
               max_seq_len=256, epochs=2, batch_size=8, learning_rate=3e-3, warmup_steps=3,
               num_threads=2, beta=0.1)  # fmt: skip
    if eval_ is not None:
        cfg["eval_dataset"] = eval_
    cfg.update(extra)
    return write_config(tmp_path / f"{name}.yaml", **cfg), tmp_path / name


def run_ok(*args, **env):
    out = run_cli(*args, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def held_out_preference_accuracy(model_dir, demo_data) -> float:
    """Fraction of eval pairs where the model gives the chosen answer the higher log-prob."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from vlm_trainer.data.render import Renderer
    from vlm_trainer.recipes.dpo import preference_logprobs

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    renderer = Renderer(AutoProcessor.from_pretrained(model_dir), 256)
    lp = preference_logprobs(model, renderer, demo_data / "dpo_eval.jsonl", 8, "cpu")
    return float((lp[:, 0] > lp[:, 1]).float().mean())


@pytest.mark.slow
def test_dpo_learns_the_preference_from_the_image(tmp_path, tiny_model, demo_data):
    before = held_out_preference_accuracy(tiny_model, demo_data)
    cfg, log = dpo_config(tmp_path, "dpo", tiny_model, demo_data / "dpo_train.jsonl",
                          demo_data / "dpo_eval.jsonl")  # fmt: skip
    t0 = time.monotonic()
    out = run_ok("dpo", "--config", str(cfg))
    elapsed = time.monotonic() - t0
    lines = read_jsonl(log / "metrics.jsonl")
    train = [m for m in lines if m["event"] == "train"]
    (ev,) = [m for m in lines if m["event"] == "eval"]
    print(f"\ndpo wall time {elapsed:.1f}s; held-out preference accuracy {before:.3f} -> "
          f"{ev['eval_preference_accuracy']:.3f}, reward accuracy {ev['eval_reward_accuracy']:.3f}"
          f", margin {ev['eval_margin']:.3f}")  # fmt: skip
    assert 0.3 <= before <= 0.7  # about chance: the tiny model has no preference yet
    assert ev["eval_preference_accuracy"] >= 0.9 and ev["eval_reward_accuracy"] >= 0.9
    assert ev["eval_records"] == 40
    assert [m["step"] for m in train] == list(range(1, 51))  # 200 pairs / 8 x 2 epochs
    # Step 1: the policy is the reference, so every implicit reward is exactly 0.
    assert train[0]["chosen_reward"] == train[0]["rejected_reward"] == 0.0
    assert train[0]["loss"] == pytest.approx(0.6931, abs=1e-4)  # -log sigmoid(0)
    for key in ("chosen_reward", "rejected_reward", "margin", "accuracy", "tokens_per_second"):
        assert key in train[-1]
    assert train[-1]["margin"] > 1.0 and train[-1]["loss"] < 0.4
    manifest = json.loads((log / "checkpoints" / "final" / "manifest.json").read_text())
    assert manifest["mode"] == "dpo" and manifest["metrics"]["eval_preference_accuracy"] >= 0.9
    assert '"event": "done"' in out.stdout
    assert held_out_preference_accuracy(log / "checkpoints" / "final", demo_data) >= 0.9


@pytest.fixture(scope="module")
def small_pairs(demo_data, tmp_path_factory):
    """40 training pairs (5 steps per epoch at 4 pairs x 2 micro-batches) and 8 eval pairs."""
    out = tmp_path_factory.mktemp("dpo-small")
    lines = (demo_data / "dpo_train.jsonl").read_text().splitlines()[:40]
    (out / "train.jsonl").write_text("\n".join(lines) + "\n")
    evals = (demo_data / "dpo_eval.jsonl").read_text().splitlines()[:8]
    (out / "eval.jsonl").write_text("\n".join(evals) + "\n")
    return out


@pytest.mark.slow
def test_dpo_sigkill_after_checkpoint_then_resume_is_exact(tmp_path, tiny_model, small_pairs):
    """With cached reference log-probs (recomputed by the restarted process) and ipo."""
    extra = dict(batch_size=4, gradient_accumulation_steps=2, save_every_steps=3, keep_last=2,
                 seed=3, num_threads=1, cache_reference_logprobs=True, dpo_loss="ipo",
                 weight_decay=0.01)  # fmt: skip
    data = (small_pairs / "train.jsonl", small_pairs / "eval.jsonl")
    cfg_a, log_a = dpo_config(tmp_path, "a", tiny_model, *data, **extra)
    run_ok("dpo", "--config", str(cfg_a))
    cfg_b, log_b = dpo_config(tmp_path, "b", tiny_model, *data, **extra)
    killed = run_cli("dpo", "--config", str(cfg_b), env={"VLM_TRAINER_FAULT": "after_checkpoint:6"})
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for _, p in ckpt.list_steps(log_b / "checkpoints")] == [
        "step-000003",
        "step-000006",
    ]
    resumed = run_ok("dpo", "--config", str(cfg_b))
    assert "resumed from" in resumed.stderr and "step-000006" in resumed.stderr
    assert "cached reference log-probs" in resumed.stderr

    assert_same_weights(weights(log_a / "checkpoints" / "final"),
                        weights(log_b / "checkpoints" / "final"))  # fmt: skip

    def steps(log):
        return [(m["step"], m["loss"], m["margin"]) for m in read_jsonl(log / "metrics.jsonl")
                if m["event"] == "train"]  # fmt: skip

    assert steps(log_a) == steps(log_b) and [s for s, *_ in steps(log_b)] == list(range(1, 11))
    manifest = json.loads((log_b / "checkpoints" / "final" / "manifest.json").read_text())
    assert (manifest["mode"], manifest["step"], manifest["type"]) == ("dpo", 10, "full")
    assert "eval_reward_accuracy" in manifest["metrics"]


def test_lora_reference_is_the_adapter_disabled_base(tmp_path, tiny_model, small_pairs):
    """In process: LoRA starts as the base (B = 0), so step 1's implicit rewards are exactly 0
    with the adapter-disabled reference; later they move, and no second model is loaded."""
    from vlm_trainer.config import DPOConfig
    from vlm_trainer.recipes.dpo import DPORecipe
    from vlm_trainer.recipes.reference import Reference
    from vlm_trainer.report import MultiReporter

    cfg = DPOConfig(base_model=str(tiny_model), dataset=str(small_pairs / "train.jsonl"),
                    log_path=str(tmp_path / "lora"), max_seq_len=256, batch_size=4,
                    learning_rate=1e-2, max_steps=3, lora_rank=4, lora_alpha=8, num_threads=2,
                    validate_before_training=False)  # fmt: skip
    recipe = DPORecipe(cfg, MultiReporter([]))
    assert recipe.setup()
    assert isinstance(recipe.reference, Reference) and recipe.reference.frozen is None
    steps = []
    samples = recipe.stream.samples(0)
    for _ in range(3):
        steps.append(recipe.train_step(recipe.next_batches(samples), time.perf_counter()))
    assert steps[0]["chosen_reward"] == steps[0]["rejected_reward"] == 0.0
    assert steps[2]["margin"] != 0.0
    # The reference really is the base: adapters off gives the base model's numbers.
    pair = next(recipe.stream.samples(0))[1]
    with recipe.reference.model() as ref:
        from vlm_trainer.recipes.dpo import pair_logprobs

        c, r, _ = pair_logprobs(ref, recipe.renderer, [pair], "cpu")
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(tiny_model)
    with torch.no_grad():
        bc, br, _ = pair_logprobs(base, recipe.renderer, [pair], "cpu")
    assert torch.allclose(c, bc, atol=1e-5) and torch.allclose(r, br, atol=1e-5)
