"""Peak memory and step time of one SFT step at long context with Qwen3-VL's real vocabulary.

Builds the tiny model with a 151,936-token vocabulary (``make-tiny-model --vocab-size``), then
runs, each in a fresh process (peak RSS from ``wait4``), one full-fine-tuning SFT step (forward,
loss, backward, AdamW) on one synthetic sequence of ``L`` tokens (a 64x64 image, text; the
second half of the sequence is the weighted answer) with one of three losses:

- ``chunked``: what the recipes do (``head.forward_hidden`` + ``chunked_loss.sft_loss``);
- ``full``: the previous path, ``model(...).logits`` into ``losses.sft_loss`` (a ``(L, V)``
  float32 tensor, its log-softmax and their gradients);
- ``none``: the baseline without a loss term: the last hidden state summed, plus the output
  embedding times 0 (so it gets a gradient and AdamW state as in the other two, and only the
  vocabulary projection and softmax are missing).

Prints one JSON line per run and a summary. The full-logits path needs about 20 bytes x L x V
(15+ GB at L = 8,192), so it only runs up to ``--full-max-len`` (default 2,048) on a shared
machine; its 8,192-token number is then extrapolated linearly from the largest two it ran.

Usage: ``.venv/bin/python benchmarks/trainer_long_context.py [--lens 1024 2048 4096 8192]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QWEN3_VL_VOCAB = 151_936


def child(model_dir: str, variant: str, seq_len: int, threads: int) -> dict:
    """One SFT step in this process; returns its timings (RSS is measured by the parent)."""
    import torch
    from transformers import AutoModelForImageTextToText
    from vlm_trainer import chunked_loss, losses
    from vlm_trainer.head import forward_hidden, head_weight

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs, w = batch(model.config, seq_len)
    ids = inputs["input_ids"]
    denom = losses.num_target_tokens(w)
    t0 = time.perf_counter()
    if variant == "full":
        loss = losses.sft_loss(model(**inputs).logits, ids, w, denom)
    elif variant == "chunked":
        hidden, head = forward_hidden(model, inputs)
        loss = chunked_loss.sft_loss(hidden, head, ids, w, denom)
    else:
        hidden, _ = forward_hidden(model, inputs)
        loss = hidden.float().mean() + 0.0 * head_weight(model).sum()
    t_fwd = time.perf_counter() - t0
    loss.backward()
    opt.step()
    return {"forward_s": round(t_fwd, 3), "step_s": round(time.perf_counter() - t0, 3),
            "loss": round(float(loss.detach()), 4)}  # fmt: skip


def batch(config, seq_len: int):
    """One sequence: ``<|vision_start|>`` + 4 image tokens (a 64x64 image) + ``<|vision_end|>``
    + random text tokens; the second half is weighted (the answer)."""
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 300, (1, seq_len), generator=g)  # tokens of the trained vocab
    ids[0, 1], ids[0, 6] = config.vision_start_token_id, config.vision_end_token_id
    ids[0, 2:6] = config.image_token_id
    w = torch.zeros(1, seq_len)
    w[0, seq_len // 2 :] = 1.0
    v = config.vision_config
    grid = 64 // v.patch_size
    pixels = torch.randn(grid * grid, 3 * v.temporal_patch_size * v.patch_size**2, generator=g)
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == config.image_token_id).long(),
        "pixel_values": pixels,
        "image_grid_thw": torch.tensor([[1, grid, grid]]),
    }
    return inputs, w


def run(model_dir: Path, variant: str, seq_len: int, threads: int) -> dict:
    argv = [sys.executable, __file__, "--child", variant, "--model", str(model_dir),
            "--lens", str(seq_len), "--threads", str(threads)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{variant} at {seq_len} failed: {err[-2000:]}")
    row = {"variant": variant, "seq_len": seq_len, "peak_rss_mib": round(usage.ru_maxrss / 1024)}
    return row | json.loads(out.strip().splitlines()[-1])


def summarise(rows: list[dict], lens: list[int]) -> dict:
    by = {(r["variant"], r["seq_len"]): r for r in rows}
    top = max(lens)
    base, chunked = by[("none", top)]["peak_rss_mib"], by[("chunked", top)]["peak_rss_mib"]
    out = {"seq_len": top, "baseline_mib": base, "chunked_mib": chunked,
           "chunked_adds_pct": round(100 * (chunked - base) / base, 1)}  # fmt: skip
    full = sorted(r["seq_len"] for r in rows if r["variant"] == "full")
    if top in full:
        out["full_mib"] = by[("full", top)]["peak_rss_mib"]
    elif len(full) >= 2:  # linear in L: the logits term dominates
        (a, b) = full[-2:]
        ra, rb = by[("full", a)]["peak_rss_mib"], by[("full", b)]["peak_rss_mib"]
        out["full_mib_extrapolated"] = round(rb + (rb - ra) / (b - a) * (top - b))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lens", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--full-max-len", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, help="a model built with --vocab-size (else built)")
    ap.add_argument("--child", choices=["chunked", "full", "none"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(str(args.model), args.child, args.lens[0], args.threads)))
        return
    model_dir = args.model
    if model_dir is None:
        model_dir = Path(tempfile.mkdtemp(prefix="bench-long-")) / "tiny-151936"
        cmd = [sys.executable, "-m", "vlm_trainer.cli", "make-tiny-model", str(model_dir),
               "--vocab-size", str(QWEN3_VL_VOCAB)]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rows = []
    for seq_len in args.lens:
        for variant in ("none", "chunked", "full"):
            if variant == "full" and seq_len > args.full_max_len:
                continue
            rows.append(run(model_dir, variant, seq_len, args.threads))
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"summary": summarise(rows, args.lens)}))


if __name__ == "__main__":
    main()
