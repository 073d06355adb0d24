"""SFT training throughput: ``vlm_trainer`` vs TRL's ``SFTTrainer`` on the same work.

Same tiny Qwen3-VL, same records (demo colour task, 64x64 PNG, or ``--image-size``), same batch
size, steps, learning rate, fp32, CPU threads, and the same loss masking (assistant tokens
only: TRL gets the records in its prompt-completion format, whose default is completion-only
loss). Both include their data pipelines in the timing (TRL decodes and processes images in its
collator, we in the stream). Throughput = non-pad tokens / wall time of the training loop
(model loading and our pre-training validation are excluded; TRL's ``train_runtime``).

Usage: ``.venv/bin/python benchmarks/trainer_sft_vs_trl.py [--steps 60] [--batch-size 8]
[--threads 2] [--image-size 64] [--repeats 3] [--skewed] [--packed-tokens N]``. The runs
alternate ``--repeats`` times; prints one JSON object with the medians, every run's tokens/s and
the ratios of the medians.

``--skewed``: a length-skewed dataset instead of the demo task: image sizes drawn from 64-448 px
(each side), answers of 1-200 words (most short, a few long), so padded batches are mostly
padding. ``--packed-tokens N`` adds a third run, ``vlm_trainer_packed``: the same records
packed without padding into micro-batches of at most N tokens (``tokens_per_batch``), for
``--steps`` steps. tokens/s counts real (non-pad) tokens in every run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from tiny_model import build_tiny_model  # benchmarks/ is on sys.path when run as a script

os.environ.setdefault("HF_HUB_OFFLINE", "1")


WORDS = ("red", "green", "blue", "yellow", "left", "right", "top", "bottom", "first", "second")


def skewed_data(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` records with image sides in 64..448 px and answers of 1..200 words (log-uniform:
    most are short, like real VLM data, and a few long ones dominate a padded batch)."""
    import random

    from vlm_trainer.data.images import encode_data_url
    from vlm_trainer.demo_data import colour_image

    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            w, h = rng.randint(64, 448), rng.randint(64, 448)
            img = colour_image("red", rng, 64).resize((w, h))
            words = round(200 ** rng.random())
            user = {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe the picture."},
                    {"type": "image_url", "image_url": {"url": encode_data_url(img, "JPEG")}},
                ],
            }
            answer = " ".join(rng.choice(WORDS) for _ in range(words))
            f.write(json.dumps({"messages": [user, {"role": "assistant", "content": answer}]}))
            f.write("\n")  # fmt: skip
    return path


def ours(model_dir: Path, data: Path, log: Path, args, packed_tokens: int = 0) -> dict:
    from vlm_trainer.config import SFTConfig
    from vlm_trainer.recipes import sft
    from vlm_trainer.report import LocalReporter, MultiReporter

    cfg = SFTConfig(base_model=str(model_dir), dataset=str(data), log_path=str(log),
                    batch_size=args.batch_size, max_steps=args.steps, learning_rate=1e-3,
                    lr_schedule="constant", num_threads=args.threads, max_seq_len=1024,
                    tokens_per_batch=packed_tokens)  # fmt: skip
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives for the run
    recipe = sft.SFTRecipe(cfg, MultiReporter([LocalReporter(log, stream=devnull)]))
    recipe.setup()
    t = time.perf_counter()
    recipe.train()
    wall = time.perf_counter() - t
    steps = [json.loads(x) for x in (log / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if m["event"] == "train"]
    tokens = sum(m["tokens"] for m in steps)
    mean_loss = sum(m["loss"] for m in steps) / len(steps)
    return {"steps": recipe.step, "tokens": tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1), "mean_loss": round(mean_loss, 4)}  # fmt: skip


def trl(model_dir: Path, data: Path, out: Path, args) -> dict:
    import datasets
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer
    from vlm_trainer.data.images import decode_data_url, open_image

    rows = []
    for line in data.read_text().splitlines():
        user, answer = json.loads(line)["messages"]
        image = open_image(decode_data_url(user["content"][1]["image_url"]["url"]), 10**8)
        prompt = [{"role": "user", "content": [{"type": "text", "text": user["content"][0]["text"]},
                                               {"type": "image"}]}]  # fmt: skip
        completion = [{"role": "assistant", "content": answer["content"]}]
        rows.append({"images": [image], "prompt": prompt, "completion": completion})
    ds = datasets.Dataset.from_list(rows)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype="float32")
    tokens = {"n": 0}

    config = SFTConfig(output_dir=str(out), per_device_train_batch_size=args.batch_size,
                       max_steps=args.steps, learning_rate=1e-3, lr_scheduler_type="constant",
                       logging_steps=10**6, save_strategy="no", report_to="none", use_cpu=True,
                       bf16=False, dataloader_num_workers=0, max_length=1024, seed=0,
                       disable_tqdm=True, gradient_checkpointing=False)  # fmt: skip
    trainer = SFTTrainer(model=model, args=config, train_dataset=ds, processing_class=processor)
    collate = trainer.data_collator

    def counting_collator(examples):
        batch = collate(examples)
        tokens["n"] += int(batch["attention_mask"].sum())
        return batch

    trainer.data_collator = counting_collator
    result = trainer.train()
    wall = result.metrics["train_runtime"]
    return {"steps": result.global_step, "tokens": tokens["n"], "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens["n"] / wall, 1),
            "mean_loss": round(result.training_loss, 4)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skewed", action="store_true")
    ap.add_argument("--packed-tokens", type=int, default=0)
    args = ap.parse_args()

    import torch
    from vlm_trainer.demo_data import make_demo_data
    from vlm_trainer.model import quiet_transformers

    torch.set_num_threads(args.threads)
    quiet_transformers()
    tmp = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    model_dir = build_tiny_model(tmp / "tiny")
    records = args.steps * args.batch_size
    if args.skewed:  # packing takes more records per step: enough for every run
        data = skewed_data(tmp / "skewed.jsonl", records * 4)
    else:
        make_demo_data(tmp / "data", n_train=records, n_eval=4, size=args.image_size)
        data = tmp / "data" / "sft_train.jsonl"
    # Alternate the runs, several times: on a shared machine the median is what means something.
    runs: dict[str, list[dict]] = {"vlm_trainer": [], "trl_sft_trainer": []}
    if args.packed_tokens:
        runs["vlm_trainer_packed"] = []
    for r in range(args.repeats):
        runs["vlm_trainer"].append(ours(model_dir, data, tmp / f"ours-{r}", args))
        if args.packed_tokens:
            log = tmp / f"packed-{r}"
            runs["vlm_trainer_packed"].append(ours(model_dir, data, log, args, args.packed_tokens))
        runs["trl_sft_trainer"].append(trl(model_dir, data, tmp / f"trl-{r}", args))
    median = {k: sorted(v, key=lambda x: x["tokens_per_s"])[len(v) // 2] for k, v in runs.items()}
    trl_median = median["trl_sft_trainer"]["tokens_per_s"]
    print(json.dumps({
        "threads": args.threads, "batch_size": args.batch_size, "steps": args.steps,
        "image_size": "64-448 skewed" if args.skewed else args.image_size,
        "packed_tokens": args.packed_tokens, "repeats": args.repeats, "median": median,
        "ratios_vs_trl": {k: round(v["tokens_per_s"] / trl_median, 2) for k, v in median.items()},
        "all_tokens_per_s": {k: [x["tokens_per_s"] for x in v] for k, v in runs.items()},
        "ratio_tokens_per_s": round(median["vlm_trainer"]["tokens_per_s"]
                                    / median["trl_sft_trainer"]["tokens_per_s"], 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
