"""Running `vlm-trainer sft` as a pod would, with a signal at a chosen step: the helpers and
fixtures the fault tests share (one small SFT run: 20 steps, a snapshot every 4)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer.helpers import ROOT, write_config

SEED = int(os.environ.get("VLM_FAULTS_SEED", "12"))
EVERY = 4  # snapshot interval
STEPS = 20  # 40 records, batch 4 x accumulation 2: 5 steps an epoch, 4 epochs


@pytest.fixture(scope="session")
def data(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fault-data")
    lines = (demo_data / "sft_train.jsonl").read_text().splitlines()[:40]
    (out / "train.jsonl").write_text("\n".join(lines) + "\n")
    return out


def config(tmp: Path, name: str, model: Path, data: Path) -> tuple[Path, Path]:
    log = tmp / name
    cfg = dict(job_name=name, base_model=model, dataset=data / "train.jsonl", log_path=log,
               max_seq_len=256, epochs=4, batch_size=4, gradient_accumulation_steps=2,
               learning_rate=2e-3, warmup_steps=2, save_every_steps=EVERY, keep_last=0, seed=3,
               num_threads=1)  # fmt: skip
    return write_config(tmp / f"{name}.yaml", **cfg), log / "checkpoints"


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, data: Path) -> Path:
    cfg, root = config(tmp_path_factory.mktemp("ref"), "ref", tiny_model, data)
    code, _, out = run(cfg)
    assert code == 0, out[-3000:]
    return root / "final"


def run(
    cfg: Path, stop_at: int | None = None, sig: int = signal.SIGKILL, env: dict | None = None
) -> tuple[int, list[dict], str]:
    """Run `vlm-trainer sft`; send `sig` once it logged step `stop_at`. Returns the exit code
    (negative: killed by that signal), its JSON events and its whole output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    argv = [sys.executable, "-m", "vlm_trainer.cli", "sft", "--config", str(cfg)]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=full_env, cwd=ROOT)  # fmt: skip
    events, lines, sent = [], [], False
    assert p.stdout is not None
    for line in p.stdout:
        lines.append(line)
        if line.startswith("{"):
            e = json.loads(line)
            events.append(e)
            if stop_at and not sent and e.get("event") == "train" and e["step"] >= stop_at:
                p.send_signal(sig)
                sent = True
    return p.wait(timeout=300), events, "".join(lines)


def steps(events: list[dict]) -> list[int]:
    return [e["step"] for e in events if e.get("event") == "train"]


def resumed(events: list[dict]) -> int:
    return next(e.get("resumed_step") or 0 for e in events if e.get("event") == "start")
