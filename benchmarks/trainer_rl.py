"""RL and DPO step costs on the tiny model: rollout tokens/s, RL step time, DPO step time.

The tiny offline Qwen3-VL (``make-tiny-model``, random weights), the demo colour prompts (64x64
PNG), fp32 on CPU. RL: ``--prompts`` prompts per step x ``--group`` completions of exactly
``--completion-tokens`` tokens (generation does not stop at ``<|im_end|>`` here, so every run
generates the same amount of work) and a dense reward (distinct characters), so no group is
skipped and every step trains on every completion; with ``kl_beta`` 0 (no reference model) and
0.05 (a frozen reference forward per micro-batch). DPO: ``--pairs`` pairs per step, live
reference.

Reported per configuration: medians over ``--repeats`` runs of the per-run medians over
``--steps`` steps (the first step of each run dropped as warm-up) of rollout tokens/s
(generated tokens / generation wall time), rollout seconds per step, RL step seconds (rollout
+ forward/backward + optimizer), and the DPO step seconds. Loading and validation excluded.

Usage: ``.venv/bin/python benchmarks/trainer_rl.py [--steps 10] [--prompts 8] [--group 8]
[--completion-tokens 16] [--pairs 8] [--threads 2] [--repeats 5]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def distinct_chars(completion: str, fields: dict) -> float:
    """Dense reward: every group has a spread, so every completion is trained on."""
    return min(1.0, len(set(completion)) / 10)


def _quiet_reporter(log: Path):
    from vlm_trainer.report import LocalReporter, MultiReporter

    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives for the run
    return MultiReporter([LocalReporter(log, stream=devnull)])


def _steps(log: Path) -> list[dict]:
    lines = [json.loads(x) for x in (log / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if m["event"] == "train"][1:]  # drop the warm-up step


def rl_run(model: Path, data: Path, log: Path, args, kl_beta: float) -> dict:
    import vlm_trainer.rollout as rollout_mod
    from vlm_trainer.config import RLConfig
    from vlm_trainer.recipes import rl

    cfg = RLConfig(base_model=str(model), dataset=str(data), log_path=str(log), max_seq_len=512,
                   batch_size=args.prompts, completions_per_prompt=args.group,
                   max_completion_tokens=args.completion_tokens, max_steps=args.steps + 1,
                   learning_rate=1e-4, lr_schedule="constant", num_threads=args.threads,
                   reward="__main__:distinct_chars", kl_beta=kl_beta,
                   validate_before_training=False)  # fmt: skip
    # Fixed-length completions: never stop early (same generated work in every run).
    real = rollout_mod.stop_token_ids
    rollout_mod.stop_token_ids = lambda tok: [-1]
    try:
        recipe = rl.RLRecipe(cfg, _quiet_reporter(log))
        recipe.setup()
        recipe.train()
    finally:
        rollout_mod.stop_token_ids = real
    steps = _steps(log)
    return {
        "rollout_tokens_per_s": statistics.median(m["rollout_tokens_per_second"] for m in steps),
        "rollout_s_per_step": round(statistics.median(m["rollout_time_s"] for m in steps), 4),
        "rl_step_s": round(statistics.median(m["step_time_s"] for m in steps), 4),
        "train_tokens_per_step": round(statistics.mean(m["tokens"] for m in steps)),
    }


def dpo_run(model: Path, data: Path, log: Path, args) -> dict:
    from vlm_trainer.config import DPOConfig
    from vlm_trainer.recipes import dpo

    cfg = DPOConfig(base_model=str(model), dataset=str(data), log_path=str(log), max_seq_len=512,
                    batch_size=args.pairs, max_steps=args.steps + 1, learning_rate=1e-4,
                    lr_schedule="constant", num_threads=args.threads,
                    validate_before_training=False)  # fmt: skip
    recipe = dpo.DPORecipe(cfg, _quiet_reporter(log))
    recipe.setup()
    recipe.train()
    steps = _steps(log)
    return {
        "dpo_step_s": round(statistics.median(m["step_time_s"] for m in steps), 4),
        "dpo_tokens_per_s": round(statistics.median(m["tokens_per_second"] for m in steps), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--completion-tokens", type=int, default=16)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    from vlm_trainer.demo_data import make_demo_data
    from vlm_trainer.model import quiet_transformers
    from vlm_trainer.tiny import make_tiny_model

    quiet_transformers()
    root = Path(tempfile.mkdtemp(prefix="bench-rl-"))
    model = make_tiny_model(root / "model")
    make_demo_data(root / "data", n_train=max(64, args.prompts * (args.steps + 1)), n_eval=4)
    runs: dict[str, list[dict]] = {"rl_kl0": [], "rl_kl": [], "dpo": []}
    for r in range(args.repeats):  # alternate, so a busy moment hits every configuration
        t = time.perf_counter()
        runs["rl_kl0"].append(rl_run(model, root / "data/rl_train.jsonl", root / f"a{r}", args, 0))
        runs["rl_kl"].append(
            rl_run(model, root / "data/rl_train.jsonl", root / f"b{r}", args, 0.05)
        )
        runs["dpo"].append(dpo_run(model, root / "data/dpo_train.jsonl", root / f"c{r}", args))
        print(f"repeat {r + 1}/{args.repeats}: {time.perf_counter() - t:.1f}s", flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[name])

    print(
        json.dumps(
            {
                "config": vars(args),
                "rollout_tokens_per_s": median("rl_kl0", "rollout_tokens_per_s"),
                "rollout_s_per_step": median("rl_kl0", "rollout_s_per_step"),
                "rl_step_s": median("rl_kl0", "rl_step_s"),
                "rl_step_s_with_kl": median("rl_kl", "rl_step_s"),
                "dpo_step_s": median("dpo", "dpo_step_s"),
                "dpo_tokens_per_s": median("dpo", "dpo_tokens_per_s"),
                "runs": runs,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
