"""Distributed DPO and RL on CPU: ``torchrun --nproc_per_node 2`` (gloo) against one process.

As for SFT (``test_dist_training.py``), ``batch_size`` counts pairs / prompts over all ranks, so
one config is "the same global batch" on any world size. Checked for each recipe: the per-step
loss and metric curve of 2 processes (DDP) equals 1 process's within 1e-5, and a 2-process run
SIGKILLed after a checkpoint resumes to bit-identical weights and the same curve; under FSDP2
(``VLM_DIST_STRATEGY=fsdp``, the GPU path) both match one process too. The data are
chosen to hit the awkward cases: some records text-only (a rank's share then may hold no image
and gets the zero-weight dummy one), and a step whose last micro-batch is smaller than the
world size (one rank's share is a zero-weight copy).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.trainer.helpers import assert_close_curves, read_jsonl, torchrun, torchrun_ok
from tests.trainer.test_dpo import dpo_config
from tests.trainer.test_dpo import run_ok as run_cli_ok
from tests.trainer.test_rl import rl_config
from tests.trainer.test_sft_resume import assert_same_weights, weights

pytestmark = [pytest.mark.trainer, pytest.mark.slow]


def text_only(messages: list[dict]) -> list[dict]:
    """``messages`` with every image part dropped."""
    out = []
    for m in messages:
        if isinstance(m["content"], list):
            m = {**m, "content": [p for p in m["content"] if p.get("type") == "text"]}
        out.append(m)
    return out


def subset(src, dst, n: int, mode: str) -> None:
    """The first ``n`` records of ``src``, every third one without images."""
    lines = []
    for i, line in enumerate(src.read_text().splitlines()[:n]):
        rec = json.loads(line)
        if i % 3 == 2:
            if mode == "dpo":
                for side in ("chosen", "rejected"):
                    rec[side]["messages"] = text_only(rec[side]["messages"])
            else:
                rec["messages"] = text_only(rec["messages"])
        lines.append(json.dumps(rec))
    dst.write_text("\n".join(lines) + "\n")


def curve(log, keys: tuple[str, ...]) -> list[tuple]:
    return [
        (m["step"], *(m[k] for k in keys))
        for m in read_jsonl(log / "metrics.jsonl")
        if m["event"] == "train"
    ]


def check(tmp_path, mode: str, make_config, keys: tuple[str, ...], kill_at: int, steps: int):
    """1 process, 2 processes, 2 processes killed after step ``kill_at``'s checkpoint and
    restarted: the curves match and the resumed weights equal the uninterrupted ones."""
    t0 = time.monotonic()
    cfg1, log1 = make_config("one")
    run_cli_ok(mode, "--config", str(cfg1), OMP_NUM_THREADS="1")
    cfg2, log2 = make_config("two")
    torchrun_ok(cfg2, mode=mode)
    worst = assert_close_curves(curve(log1, keys), curve(log2, keys))
    assert [s for s, *_ in curve(log2, keys)] == list(range(1, steps + 1))

    cfg3, log3 = make_config("killed")
    killed = torchrun(cfg3, mode=mode, VLM_TRAINER_FAULT=f"after_checkpoint:{kill_at}")
    assert killed.returncode != 0 and not (log3 / "checkpoints" / "final").exists()
    resumed = torchrun_ok(cfg3, mode=mode)
    assert "resumed from" in resumed.stderr and f"step-{kill_at:06d}" in resumed.stderr
    final = "checkpoints/final"
    assert_same_weights(weights(log2 / final), weights(log3 / final))
    assert curve(log2, keys) == curve(log3, keys)
    print(f"\n{mode}: 2 vs 1 process max difference {worst:.2e} over {keys}; resumed weights "
          f"equal; {time.monotonic() - t0:.1f}s")  # fmt: skip
    return log1, log2


DPO_KEYS = ("loss", "chosen_reward", "rejected_reward", "margin", "accuracy", "samples")
RL_KEYS = ("loss", "reward_mean", "reward_std", "kl", "clip_fraction", "completion_length",
           "zero_variance_groups", "groups", "samples")  # fmt: skip


def dpo_maker(tmp_path, tiny_model, demo_data, **more):
    # 29 pairs, 4 x 2 per step: the last step of each epoch is [4, 1] pairs, so one rank's
    # share of its second micro-batch is a zero-weight copy. No reference cache: the frozen
    # reference model runs on every rank, every micro-batch.
    subset(demo_data / "dpo_train.jsonl", tmp_path / "pairs.jsonl", 29, "dpo")
    extra = dict(batch_size=4, gradient_accumulation_steps=2, epochs=2, save_every_steps=3,
                 keep_last=2, seed=3, num_threads=1, learning_rate=3e-3, warmup_steps=2,
                 weight_decay=0.01) | more  # fmt: skip
    return lambda name: dpo_config(tmp_path, name, tiny_model, tmp_path / "pairs.jsonl", **extra)


def rl_maker(tmp_path, tiny_model, demo_data, **more):
    # 12 prompts, 3 per micro-batch: shares of 1 and 2 prompts (whole groups), so the ranks
    # generate different numbers of rows; the KL reference runs on every rank.
    subset(demo_data / "rl_train.jsonl", tmp_path / "prompts.jsonl", 12, "rl")
    extra = dict(epochs=2, batch_size=3, gradient_accumulation_steps=2, completions_per_prompt=4,
                 max_completion_tokens=6, learning_rate=5e-3, save_every_steps=2, keep_last=2,
                 seed=5, num_threads=1, kl_beta=0.05, top_p=0.95,
                 reward="tests.trainer.rl_rewards:distinct_chars") | more  # fmt: skip
    return lambda name: rl_config(tmp_path, name, tiny_model, tmp_path / "prompts.jsonl", **extra)


def test_dpo_two_processes_match_one_and_resume_exactly(tmp_path, tiny_model, demo_data):
    make = dpo_maker(tmp_path, tiny_model, demo_data)
    log1, _ = check(tmp_path, "dpo", make, DPO_KEYS, kill_at=6, steps=8)
    assert curve(log1, ("margin",))[-1][1] != 0.0  # the policy moved


def test_rl_two_processes_match_one_and_resume_exactly(tmp_path, tiny_model, demo_data):
    make = rl_maker(tmp_path, tiny_model, demo_data)
    log1, _ = check(tmp_path, "rl", make, RL_KEYS, kill_at=2, steps=4)
    assert curve(log1, ("kl",))[-1][1] > 0.0  # the policy moved away from the reference


def test_fsdp_dpo_and_rl_match_one_process(tmp_path, tiny_model, demo_data):
    """The GPU path on CPU (FSDP2 over gloo): DPO with cached reference log-probs, RL with
    generation kept in step across ranks (``synced_gpus``): no hang, the one-process curve."""
    t0 = time.monotonic()
    worst = {}
    for mode, maker, keys, more in (
        ("dpo", dpo_maker, DPO_KEYS, dict(cache_reference_logprobs=True, epochs=1)),
        ("rl", rl_maker, RL_KEYS, dict(epochs=1)),
    ):
        (tmp_path / mode).mkdir()
        make = maker(tmp_path / mode, tiny_model, demo_data, save_every_steps=0, **more)
        cfg1, log1 = make("one")
        run_cli_ok(mode, "--config", str(cfg1), OMP_NUM_THREADS="1")
        cfg2, log2 = make("fsdp")
        torchrun_ok(cfg2, mode=mode, VLM_DIST_STRATEGY="fsdp", VLM_DIST_TIMEOUT_S="60")
        worst[mode] = assert_close_curves(curve(log1, keys), curve(log2, keys))
    print(f"\nfsdp: max difference {worst}; {time.monotonic() - t0:.1f}s")
