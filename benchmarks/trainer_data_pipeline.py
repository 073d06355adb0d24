"""Trainer data pipeline throughput on 448x448 JPEG records.

Stages, each timed over the same file (records/s):

- ``validate``: stream + JSON + base64 + Pillow decode + checks (``validate_file``, no processor);
- ``render``: what training does per record: parse, decode, chat template, tokenize, weights,
  image processor (resize/normalise/patchify), via ``RecordStream``; plus ``collate`` (batch 8);
- ``hf_processor``: reference, the plain HF path for the same records and batches of 8:
  base64 + Pillow decode, ``processor.apply_chat_template``, ``processor(text=[8 texts],
  images=[8 images], padding=True)`` (no loss weights, no validation);
- ``prefetch`` (with ``--workers N``): ``render_collate`` with the stream rendered in N
  DataLoader worker processes (``data_workers``), as training runs it; ``per_core`` divides
  by the N worker cores (the consumer only collates).

``*_per_core`` keys divide each rate by the cores the stage used (``--threads`` for the
in-process stages). Usage: ``.venv/bin/python benchmarks/trainer_data_pipeline.py
[--records 200] [--threads 2] [--repeats 3] [--workers 2]``. Prints one JSON object (medians
over the repeats, and every repeat). Builds the tiny model (its processor is Qwen3-VL's: patch
16, merge 2) in a temp dir; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from tiny_model import build_tiny_model  # benchmarks/ is on sys.path when run as a script

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def jpeg_record(rng: random.Random, size: int = 448) -> dict:
    """A photo-like JPEG (gradient, shapes, noise: ~40-80 KB at quality 90) and a question."""
    from PIL import Image, ImageDraw
    from vlm_trainer.data.images import encode_data_url

    img = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y = rng.randint(0, size - 40), rng.randint(0, size - 40)
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        draw.ellipse([x, y, x + rng.randint(20, 160), y + rng.randint(20, 160)], fill=colour)
    img = Image.blend(img, Image.effect_noise((size, size), 40).convert("RGB"), 0.2)
    return {
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Describe the picture."},
                {"type": "image_url", "image_url": {"url": encode_data_url(img, "JPEG", 90)}},
            ]},
            {"role": "assistant", "content": "The picture shows a square and a circle."},
        ]
    }  # fmt: skip


def write_dataset(path: Path, n: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps(jpeg_record(rng)) + "\n")
    return path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()

    import torch
    from transformers import AutoProcessor
    from vlm_trainer.data.collate import collate
    from vlm_trainer.data.images import decode_data_url, open_image
    from vlm_trainer.data.prefetch import PrefetchStream
    from vlm_trainer.data.render import Renderer
    from vlm_trainer.data.stream import RecordStream
    from vlm_trainer.data.validate import validate_file

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-data-"))
    model_dir = build_tiny_model(tmp / "tiny")
    processor = AutoProcessor.from_pretrained(model_dir)
    data = tmp / "jpeg448.jsonl"
    size = write_dataset(data, args.records)
    n = args.records
    result = {"records": n, "file_mb": round(size / 2**20, 1), "threads": args.threads}

    renderer = Renderer(processor, max_seq_len=4096)

    def validate() -> None:
        assert validate_file(data).ok

    def render(workers: int = 0) -> None:
        batch = []
        stream = RecordStream(data, renderer, seed=0)
        if workers:
            stream = PrefetchStream(stream, workers)
        for _, sample in stream.samples(0):
            result["tokens_per_record"] = sample.num_tokens
            batch.append(sample)
            if len(batch) == 8:
                collate(batch, renderer.pad_token_id, renderer.image_token_id)
                batch = []

    def hf_processor() -> None:  # the plain HF path for the same records and batches
        texts, images = [], []
        with open(data) as f:
            for line in f:
                msgs = json.loads(line)["messages"]
                url = msgs[0]["content"][1]["image_url"]["url"]
                images.append(open_image(decode_data_url(url), 10**8))
                parts = [{"type": "text", "text": "Describe the picture."}, {"type": "image"}]
                prompt = {"role": "user", "content": parts}
                texts.append(processor.apply_chat_template([prompt, msgs[1]], tokenize=False))
                if len(texts) == 8:
                    processor(text=texts, images=images, padding=True, return_tensors="pt")
                    texts, images = [], []

    # Alternate the stages, several times, and keep the median: the machine may be shared.
    stages = {"validate": validate, "render_collate": render, "hf_processor": hf_processor}
    if args.workers:
        stages["prefetch"] = lambda: render(args.workers)
    rates: dict[str, list[float]] = {k: [] for k in stages}
    for _ in range(args.repeats):
        for name, fn in stages.items():
            t = time.perf_counter()
            fn()
            rates[name].append(round(n / (time.perf_counter() - t), 1))
    for name, values in rates.items():
        result[f"{name}_records_per_s"] = sorted(values)[len(values) // 2]
        result[f"{name}_all"] = values
        cores = args.workers if name == "prefetch" else args.threads
        result[f"{name}_per_core"] = round(result[f"{name}_records_per_s"] / cores, 1)
    result["render_vs_hf_processor"] = round(
        result["render_collate_records_per_s"] / result["hf_processor_records_per_s"], 2
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
