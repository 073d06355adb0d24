"""Watching a run: /metrics scraped over HTTP while the trainer runs, TensorBoard's own reader
on the event file, and ``vlm-trainer plot`` writing a PNG that Pillow opens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image

from tests.trainer.helpers import ROOT, free_port, read_jsonl, run_cli, write_config

pytestmark = [pytest.mark.trainer, pytest.mark.slow]


def scrape(port: int) -> dict[str, float]:
    """``{series: value}`` of the trainer's /metrics (``{}`` while it is not up yet)."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return {}
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_tensorboard_and_plot_of_a_run(tmp_path, tiny_model, demo_data):
    lines = (demo_data / "sft_train.jsonl").read_text().splitlines()[:24]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    evals = (demo_data / "sft_eval.jsonl").read_text().splitlines()[:4]
    (tmp_path / "eval.jsonl").write_text("\n".join(evals) + "\n")
    log, port = tmp_path / "run", free_port()
    cfg = write_config(tmp_path / "cfg.yaml", job_name="watched", base_model=tiny_model,
                       dataset=tmp_path / "train.jsonl", eval_dataset=tmp_path / "eval.jsonl",
                       log_path=log, max_seq_len=256, batch_size=2, max_steps=12,
                       learning_rate=0.003, save_every_steps=6, num_threads=1)  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLM_TRAINER_METRICS_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "vlm_trainer.cli", "sft", "--config",
                             str(cfg)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        got = scrape(port)
        if got.get('vlm_trainer_step{job="watched"}', 0) >= 1:
            seen = got  # the latest scrape taken during the run
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stdout[-2000:] + stderr[-2000:]
    # Not a TTY: plain JSON lines on stdout, no progress bar.
    assert "\r" not in stdout and all(json.loads(x) for x in stdout.splitlines() if x)

    step = seen['vlm_trainer_step{job="watched"}']
    train = {m["step"]: m for m in read_jsonl(log / "metrics.jsonl") if m["event"] == "train"}
    assert 1 <= step <= 12 and seen['vlm_trainer_total_steps{job="watched"}'] == 12
    # The served loss is the one the trainer logged for that step (or a later one, scraped
    # between the two reads).
    loss = seen['vlm_trainer_loss{job="watched"}']
    assert any(loss == pytest.approx(train[s]["loss"]) for s in range(int(step), 13))
    assert 'vlm_trainer_learning_rate{job="watched"}' in seen
    assert 'vlm_trainer_tokens_per_second{job="watched"}' in seen

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log))
    acc.Reload()
    tb_loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert sorted(tb_loss) == list(range(1, 13))
    assert all(tb_loss[s] == pytest.approx(train[s]["loss"]) for s in tb_loss)
    assert [e.step for e in acc.Scalars("eval/eval_loss")] == [6, 12]

    out = run_cli("plot", str(log), "-o", str(tmp_path / "curves.png"))
    assert out.returncode == 0, out.stderr[-2000:]
    with Image.open(tmp_path / "curves.png") as img:
        assert img.format == "PNG" and img.width > 400 and img.height > 200
        colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 10  # curves drawn, not a blank canvas
