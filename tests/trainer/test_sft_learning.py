"""Learning: SFT on the tiny model learns a task whose answer is only in the image.

The demo task has four colours, a fixed question and balanced labels: chance is 25%. The same
run on the same records with every image replaced by one grey image is the control: it shows
the accuracy comes from the pixels, not from the text or the label prior.
"""

from __future__ import annotations

import json

import pytest
from vlm_trainer.data.images import encode_data_url

from tests.trainer.helpers import read_jsonl, sft_then_eval, write_config

pytestmark = pytest.mark.trainer


def sft_config(tmp_path, tiny_model, train, eval_):
    return write_config(
        tmp_path / "cfg.yaml",
        job_name="learn",
        base_model=tiny_model,
        dataset=f"file://{train}",
        eval_dataset=eval_,
        log_path=tmp_path / "log",
        max_seq_len=256,
        epochs=3,
        batch_size=8,
        learning_rate=3e-3,
        warmup_steps=5,
        save_every_steps=0,
        num_threads=2,
    )


def train_and_eval(tmp_path, tiny_model, train, eval_) -> tuple[float, dict]:
    cfg = sft_config(tmp_path, tiny_model, train, eval_)
    return sft_then_eval(cfg, tmp_path / "log", eval_, threads=2)


def test_sft_learns_the_colour_from_the_image(tmp_path, tiny_model, demo_data):
    elapsed, report = train_and_eval(
        tmp_path, tiny_model, demo_data / "sft_train.jsonl", demo_data / "sft_eval.jsonl"
    )
    print(f"\nsft wall time {elapsed:.1f}s, eval {report}")
    assert report["records"] == 40
    assert report["accuracy"] >= 0.95, report
    assert elapsed < 120
    metrics = [m for m in read_jsonl(tmp_path / "log" / "metrics.jsonl") if m["event"] == "train"]
    assert [m["step"] for m in metrics] == list(range(1, 76))  # 200 records / 8 x 3 epochs
    assert metrics[-1]["loss"] < metrics[0]["loss"] / 5
    for key in ("loss", "lr", "tokens_per_second", "grad_norm", "epoch"):
        assert key in metrics[-1]


@pytest.mark.slow
def test_control_without_image_information_stays_at_chance(tmp_path, tiny_model, demo_data):
    from PIL import Image

    grey = encode_data_url(Image.new("RGB", (64, 64), (128, 128, 128)))

    def blank(src, dst):
        with open(src) as f, open(dst, "w") as g:
            for line in f:
                rec = json.loads(line)
                rec["messages"][0]["content"][1]["image_url"]["url"] = grey
                g.write(json.dumps(rec) + "\n")
        return dst

    train = blank(demo_data / "sft_train.jsonl", tmp_path / "train.jsonl")
    eval_ = blank(demo_data / "sft_eval.jsonl", tmp_path / "eval.jsonl")
    _, report = train_and_eval(tmp_path, tiny_model, train, eval_)
    print(f"\ncontrol eval {report}")
    assert report["accuracy"] <= 0.4, report  # balanced 4 classes: 25% at best by the prior
