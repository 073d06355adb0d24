"""Evaluation at every snapshot, and the best snapshot kept and found when the last one
overfits.

The run is built to overfit: four training images whose answers are all wrong (each image
labelled with the next colour), evaluated on the same four images with their true colours.
The model first learns the answer format (eval loss falls), then memorises the wrong labels
(eval loss rises), so the best snapshot is an early one and not the final one.
"""

from __future__ import annotations

import json

import pytest
from vlm_trainer import checkpoint as ckpt
from vlm_trainer.selection import best_snapshot, pick_best, snapshot_evals

from tests.trainer.helpers import read_jsonl, run_cli, write_config

pytestmark = [pytest.mark.trainer, pytest.mark.slow]


def overfit_data(demo_data, out):
    """Four records of four different colours: true answers (eval) and wrong ones (train)."""
    by_colour = {}
    for line in (demo_data / "sft_train.jsonl").read_text().splitlines():
        rec = json.loads(line)
        by_colour.setdefault(rec["messages"][-1]["content"], rec)
    colours = sorted(by_colour)[:4]
    truth = [by_colour[c] for c in colours]
    wrong = []
    for i, rec in enumerate(truth):
        rec = json.loads(json.dumps(rec))
        rec["messages"][-1]["content"] = colours[(i + 1) % len(colours)]
        wrong.append(rec)
    for name, recs in (("train.jsonl", wrong), ("eval.jsonl", truth)):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in recs))
    return out / "train.jsonl", out / "eval.jsonl"


def test_every_snapshot_is_evaluated_and_the_best_survives_pruning(tmp_path, tiny_model, demo_data):
    train, eval_ = overfit_data(demo_data, tmp_path)
    log = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", base_model=tiny_model, dataset=train,
                       eval_dataset=eval_, log_path=log, max_seq_len=256, batch_size=4,
                       max_steps=30, epochs=100, learning_rate=0.01, lr_schedule="constant",
                       save_every_steps=5, keep_last=1, keep_best_metric="eval_loss",
                       num_threads=2)  # fmt: skip
    out = run_cli("sft", "--config", str(cfg), timeout=900)  # 30 steps, 6 evaluations
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    evals = [m for m in read_jsonl(log / "metrics.jsonl") if m["event"] == "eval"]
    assert [m["step"] for m in evals] == [5, 10, 15, 20, 25, 30]
    assert all(0 <= m["eval_exact_match"] <= 1 for m in evals)  # one answer per record
    losses = {m["step"]: m["eval_loss"] for m in evals}
    best_step = min(losses, key=losses.get)
    print(f"\neval_loss by step: {losses}")
    assert best_step < 25 and losses[30] > losses[best_step]  # the last snapshot overfits

    root = log / "checkpoints"
    kept = sorted(p.name for _, p in ckpt.list_steps(root))
    # keep_last 1 keeps step-000025, the newest step snapshot; the best one is kept as well.
    assert kept == [ckpt.step_name(best_step), ckpt.step_name(25)]
    for name in [*kept, ckpt.FINAL]:
        manifest = ckpt.read_manifest(root / name)
        ev = manifest["eval"]
        assert ev["headline"] == "eval_loss" and ev["mode"] == "min"
        assert ev["metrics"]["eval_loss"] == pytest.approx(losses[ev["step"]])
    assert best_snapshot(root, "eval_loss", "min") == ckpt.step_name(best_step)
    assert best_snapshot(root, "eval_loss", "max") != ckpt.step_name(best_step)
    assert pick_best(snapshot_evals(root), "eval_no_such_metric", "min") is None
