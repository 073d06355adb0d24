"""RL on the tiny model: it learns a verifiable image task; rollouts per sample; exact resume.

The task is the demo colour question with ``exact_match`` against the record's ``answer``
(rewards 0 or 1). The tiny model starts from a short SFT on the same questions with every image
replaced by one grey image: it has learnt the answer format (one colour word, then
``<|im_end|>``) but nothing about the pixels, so its rewards start at chance (~0.25) and any
gain comes from RL learning to look at the image.
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


def run_ok(*args, **env):
    out = run_cli(*args, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def rl_config(tmp_path, name, model, train, **extra):
    cfg = dict(job_name=name, base_model=model, dataset=train, log_path=tmp_path / name,
               max_seq_len=256, epochs=10, batch_size=8, completions_per_prompt=8,
               max_completion_tokens=6, learning_rate=1e-3, lr_schedule="constant",
               temperature=1.0, reward="exact_match", num_threads=2)  # fmt: skip
    cfg.update(extra)
    return write_config(tmp_path / f"{name}.yaml", **cfg), tmp_path / name


@pytest.fixture(scope="module")
def format_only_model(tiny_model, demo_data, tmp_path_factory):
    """The tiny model after 60 SFT steps on grey images: answers with a colour, blind."""
    from PIL import Image
    from vlm_trainer.data.images import encode_data_url

    out = tmp_path_factory.mktemp("rl-warm")
    grey = encode_data_url(Image.new("RGB", (64, 64), (128, 128, 128)))
    with open(demo_data / "sft_train.jsonl") as f, open(out / "grey.jsonl", "w") as g:
        for line in f:
            rec = json.loads(line)
            rec["messages"][0]["content"][1]["image_url"]["url"] = grey
            g.write(json.dumps(rec) + "\n")
    cfg = write_config(out / "sft.yaml", base_model=tiny_model, dataset=out / "grey.jsonl",
                       log_path=out / "log", max_seq_len=256, epochs=3, max_steps=60,
                       batch_size=8, learning_rate=3e-3, warmup_steps=2, num_threads=2)  # fmt: skip
    run_ok("sft", "--config", str(cfg))
    return out / "log" / "checkpoints" / "final"


@pytest.mark.slow
def test_rl_learns_to_read_the_colour_from_the_image(tmp_path, format_only_model, demo_data):
    cfg, log = rl_config(tmp_path, "rl", format_only_model, demo_data / "rl_train.jsonl",
                         eval_dataset=demo_data / "rl_eval.jsonl", max_steps=140)  # fmt: skip
    t0 = time.monotonic()
    run_ok("rl", "--config", str(cfg))
    elapsed = time.monotonic() - t0
    lines = read_jsonl(log / "metrics.jsonl")
    train = [m for m in lines if m["event"] == "train"]
    (ev,) = [m for m in lines if m["event"] == "eval"]
    rewards = [m["reward_mean"] for m in train]
    tenth = max(1, len(rewards) // 10)
    first, last = sum(rewards[:tenth]) / tenth, sum(rewards[-tenth:]) / tenth
    print(
        f"\nrl wall time {elapsed:.1f}s, {len(rewards)} steps; mean reward first 10% "
        f"{first:.3f}, last 10% {last:.3f}; greedy eval reward {ev['eval_reward_mean']:.3f}"
    )
    print("reward curve (mean per 10 steps):",
          " ".join(f"{sum(rewards[i:i + 10]) / len(rewards[i:i + 10]):.2f}"
                   for i in range(0, len(rewards), 10)))  # fmt: skip
    assert len(rewards) == 140 and all(0.0 <= r <= 1.0 for r in rewards)
    assert last - first >= 0.3
    for key in ("reward_std", "clip_fraction", "completion_length", "zero_variance_groups",
                "rollout_tokens_per_second", "loss", "lr", "grad_norm"):  # fmt: skip
        assert key in train[-1]
    assert 2 <= train[-1]["completion_length"] <= 6
    assert ev["eval_records"] == 40
    manifest = json.loads((log / "checkpoints" / "final" / "manifest.json").read_text())
    assert manifest["mode"] == "rl" and "eval_reward_mean" in manifest["metrics"]


@pytest.fixture(scope="module")
def small_prompts(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("rl-small")
    lines = (demo_data / "rl_train.jsonl").read_text().splitlines()[:16]
    (out / "train.jsonl").write_text("\n".join(lines) + "\n")
    return out / "train.jsonl"


@pytest.mark.slow
def test_rl_sigkill_after_checkpoint_then_resume_is_exact(tmp_path, tiny_model, small_prompts):
    """Sampling, rewards (a user module:function) and the KL reference all replay exactly."""
    extra = dict(epochs=2, batch_size=2, gradient_accumulation_steps=2, completions_per_prompt=4,
                 max_completion_tokens=8, learning_rate=5e-3, save_every_steps=3, keep_last=2,
                 seed=5, num_threads=1, kl_beta=0.05, eps_clip_high=0.28, top_p=0.95,
                 reward="tests.trainer.rl_rewards:distinct_chars")  # fmt: skip
    cfg_a, log_a = rl_config(tmp_path, "a", tiny_model, small_prompts, **extra)
    run_ok("rl", "--config", str(cfg_a))
    cfg_b, log_b = rl_config(tmp_path, "b", tiny_model, small_prompts, **extra)
    killed = run_cli("rl", "--config", str(cfg_b), env={"VLM_TRAINER_FAULT": "after_checkpoint:6"})
    assert killed.returncode == -signal.SIGKILL
    names = [p.name for _, p in ckpt.list_steps(log_b / "checkpoints")]
    assert names == ["step-000003", "step-000006"]
    resumed = run_ok("rl", "--config", str(cfg_b))
    assert "resumed from" in resumed.stderr and "step-000006" in resumed.stderr
    assert_same_weights(weights(log_a / "checkpoints" / "final"),
                        weights(log_b / "checkpoints" / "final"))  # fmt: skip

    def steps(log):
        return [(m["step"], m["reward_mean"], m["loss"], m["kl"])
                for m in read_jsonl(log / "metrics.jsonl") if m["event"] == "train"]  # fmt: skip

    assert steps(log_a) == steps(log_b) and [s[0] for s in steps(log_b)] == list(range(1, 9))
    assert any(s[3] > 0 for s in steps(log_b))  # the policy moved away from the reference
    assert any(m["zero_variance_groups"] < m["groups"] for m in read_jsonl(log_b / "metrics.jsonl")
               if m["event"] == "train")  # fmt: skip


def test_rollouts_keep_each_prompts_images(tiny_model, demo_data):
    """Prompts with images of different sizes and one without: a group's completions carry
    their own prompt's pixels, and batched greedy rollouts equal one-prompt-at-a-time ones."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from vlm_trainer.data.collate import collate, model_inputs
    from vlm_trainer.data.images import encode_data_url
    from vlm_trainer.data.jsonl import parse_line
    from vlm_trainer.data.render import Renderer
    from vlm_trainer.data.stream import Prompt
    from vlm_trainer.rollout import rollout

    renderer = Renderer(AutoProcessor.from_pretrained(tiny_model), 256)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model).eval()

    def prompt(i, *sizes):
        parts = [{"type": "text", "text": "What colour is this image?"}]
        parts += [{"type": "image_url", "image_url": {"url": encode_data_url(
            Image.new("RGB", s, (40 * i, 200 - 30 * i, 90)))}} for s in sizes]  # fmt: skip
        line = json.dumps({"messages": [{"role": "user", "content": parts}], "answer": "red"})
        record, issues = parse_line(line, file="t", line=i, mode="rl")
        assert record is not None, issues
        return Prompt(renderer.render_prompt(record.conversation), i, record.extra)

    prompts = [prompt(1, (64, 64)), prompt(2), prompt(3, (96, 32), (32, 32))]
    groups = rollout(model, renderer, prompts, 3, 5, temperature=1.0)
    assert [len(g) for g in groups] == [3, 3, 3]
    for p, g in zip(prompts, groups, strict=True):
        for c in g:
            assert c.sample.num_images == p.prompt.num_images
            if p.prompt.pixel_values is not None:
                assert torch.equal(c.sample.pixel_values, p.prompt.pixel_values)
            assert torch.equal(c.sample.input_ids[: p.prompt.num_tokens], p.prompt.input_ids)
            assert c.sample.num_weighted == c.num_tokens >= 1
    # All nine completions train in one forward pass (images in sample order).
    batch = collate([c.sample for g in groups for c in g], renderer.pad_token_id,
                    renderer.image_token_id)  # fmt: skip
    with torch.no_grad():
        assert model(**model_inputs(batch, "cpu")).logits.shape[0] == 9

    together = rollout(model, renderer, prompts, 2, 5, greedy=True)
    alone = [rollout(model, renderer, [p], 1, 5, greedy=True)[0][0] for p in prompts]
    for g, a in zip(together, alone, strict=True):
        assert [c.text for c in g] == [a.text, a.text]
        assert torch.equal(g[0].sample.input_ids, a.sample.input_ids)


def test_cli_refuses_bad_rewards_and_data_before_training(tmp_path, tiny_model, demo_data):
    cfg, _ = rl_config(tmp_path, "bad", tiny_model, demo_data / "rl_train.jsonl")
    out = run_cli("rl", "--config", str(cfg), "reward=no_such_reward")
    assert out.returncode == 78 and "unknown reward 'no_such_reward'" in out.stderr
    # A DPO file given to RL: every line is named, exit 65 (the operator's DataInvalid).
    out = run_cli("rl", "--config", str(cfg), f"dataset={demo_data / 'dpo_eval.jsonl'}")
    assert out.returncode == 65 and "dpo_eval.jsonl:1: messages: missing" in out.stdout
    assert "use --mode dpo" in out.stdout
    # validate-data knows both formats.
    for mode in ("dpo", "rl"):
        ok = run_cli("validate-data", str(demo_data / f"{mode}_eval.jsonl"), "--mode", mode,
                     "--model", str(tiny_model))  # fmt: skip
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert json.loads(ok.stdout)["trainable_records"] == 40


def test_lora_rl_kl_reference_is_the_adapter_disabled_base(tmp_path, tiny_model, small_prompts):
    """In process: with LoRA the KL reference is the base (adapters off), so the first step's
    KL is exactly 0 (B = 0) and later ones are not; no second model is loaded."""
    from vlm_trainer.config import RLConfig
    from vlm_trainer.recipes.rl import RLRecipe
    from vlm_trainer.report import MultiReporter

    cfg = RLConfig(base_model=str(tiny_model), dataset=str(small_prompts),
                   log_path=str(tmp_path / "lora"), max_seq_len=256, batch_size=4,
                   completions_per_prompt=4, max_completion_tokens=6, learning_rate=2e-2,
                   max_steps=3, lora_rank=4, lora_alpha=8, kl_beta=0.1, num_threads=2,
                   gradient_checkpointing=True, validate_before_training=False,
                   reward="tests.trainer.rl_rewards:distinct_chars")  # fmt: skip
    recipe = RLRecipe(cfg, MultiReporter([]))
    assert recipe.setup() and recipe.reference.frozen is None
    samples = recipe.stream.samples(0)
    steps = [recipe.train_step(recipe.next_batches(samples), time.perf_counter())
             for _ in range(3)]  # fmt: skip
    assert steps[0]["kl"] == 0.0 and steps[2]["kl"] > 0.0
    assert all(s["zero_variance_groups"] < s["groups"] for s in steps)
