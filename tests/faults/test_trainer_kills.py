"""The trainer killed again and again: SIGKILL at random steps loses at most one snapshot
interval each time, SIGTERM loses nothing (the trainer snapshots at the step it reached and
exits 75), a kill in the middle of a snapshot write leaves nothing that looks whole; every
interrupted run ends with weights equal (torch.equal) to the uninterrupted one.

The random steps come from a seeded generator (`VLM_FAULTS_SEED`, default 12) so a failure can
be replayed; the seed is in the assertion messages."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from vlm_trainer import checkpoint as ckpt

from tests.integration.resume_checks import assert_same_weights
from tests.trainer.helpers import ROOT, write_config

pytestmark = [pytest.mark.faults, pytest.mark.trainer, pytest.mark.slow]

SEED = int(os.environ.get("VLM_FAULTS_SEED", "12"))
EVERY = 4  # snapshot interval
STEPS = 20  # 40 records, batch 4 x accumulation 2: 5 steps an epoch, 4 epochs
EXIT_PREEMPTED = 75


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
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


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_at_random_steps_resumes_to_the_same_weights(
    tmp_path, tiny_model, data, reference, sig, record
) -> None:
    cfg, root = config(tmp_path, "victim", tiny_model, data)
    rng = random.Random(f"{SEED}-{int(sig)}")
    targets = sorted(rng.sample(range(2, STEPS - 1), 3))
    lost: list[int] = []
    start = 0  # the step the next run resumes from
    for target in targets:
        code, events, out = run(cfg, stop_at=max(target, start + 1), sig=sig)
        assert resumed(events) == start, f"seed {SEED}: resumed at {resumed(events)}, not {start}"
        reached = max(steps(events))
        expect = -signal.SIGKILL if sig == signal.SIGKILL else EXIT_PREEMPTED
        assert code == expect, f"seed {SEED}, stop at {target}: exit {code}\n{out[-3000:]}"
        # Whatever the kill interrupted, no snapshot folder is both named as one and broken.
        for _, snap in ckpt.list_steps(root):
            assert ckpt.verify(snap) is None, f"seed {SEED}: {snap} is half written"
        latest = ckpt.latest_verified(root)
        start = int(latest.name.split("-")[1]) if latest else 0
        lost.append(reached - start)
        record(fault=sig.name, at_step=reached, resumed_from=start, steps_lost=reached - start)
    code, events, out = run(cfg)
    assert code == 0 and resumed(events) == start, out[-3000:]
    assert_same_weights(ckpt_weights(reference), ckpt_weights(root / "final"))
    if sig == signal.SIGKILL:
        assert max(lost) < EVERY, f"seed {SEED}: lost {lost} steps, snapshot every {EVERY}"
    else:
        assert lost == [0, 0, 0], f"seed {SEED}: SIGTERM lost {lost} steps"


def test_killed_while_writing_a_snapshot_leaves_no_half_snapshot(
    tmp_path, tiny_model, data, reference, record
) -> None:
    cfg, root = config(tmp_path, "torn", tiny_model, data)
    at = random.Random(SEED).choice(range(2 * EVERY, STEPS, EVERY))
    code, events, out = run(cfg, env={"VLM_TRAINER_FAULT": f"during_checkpoint:{at}"})
    assert code == -signal.SIGKILL, out[-3000:]
    torn = [p for p in root.iterdir() if p.name.startswith(f".tmp-{ckpt.step_name(at)}")]
    assert torn and not (root / ckpt.step_name(at)).exists()  # half written, not committed
    assert ckpt.latest_verified(root) == root / ckpt.step_name(at - EVERY)
    code, events, out = run(cfg)
    assert code == 0 and resumed(events) == at - EVERY, out[-3000:]
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert_same_weights(ckpt_weights(reference), ckpt_weights(root / "final"))
    record(fault="SIGKILL during snapshot write", at_step=at, resumed_from=at - EVERY,
           steps_lost=EVERY)  # fmt: skip


def ckpt_weights(final: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(final / "model.safetensors")
