"""Graceful stop: ``vlm-trainer sft`` sent SIGTERM mid-run (with ``save_every_steps`` larger than
the run, so no periodic snapshot exists) writes a snapshot at the step it reached, exits with
``EXIT_PREEMPTED``, and a re-run resumes from that step to final weights ``torch.equal`` to an
uninterrupted run. Under torchrun, a SIGTERM that reaches one rank only still stops every rank
after the same step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from vlm_trainer import checkpoint as ckpt
from vlm_trainer.exit_codes import EXIT_PREEMPTED

from tests.trainer.helpers import DIST_ENV, ROOT, TORCHRUN, free_port, read_jsonl, torchrun_ok
from tests.trainer.test_sft_resume import assert_same_weights, config, run_ok, weights

pytestmark = [pytest.mark.trainer, pytest.mark.slow]

NO_PERIODIC = dict(save_every_steps=1000, epochs=4)  # 20 steps, no periodic snapshot


@pytest.fixture(scope="module")
def small_data(demo_data, tmp_path_factory):
    """40 training records: 5 steps per epoch at batch 4 x accumulation 2."""
    out = tmp_path_factory.mktemp("graceful-data")
    lines = (demo_data / "sft_train.jsonl").read_text().splitlines()[:40]
    (out / "train.jsonl").write_text("\n".join(lines) + "\n")
    evals = (demo_data / "sft_eval.jsonl").read_text().splitlines()[:8]
    (out / "eval.jsonl").write_text("\n".join(evals) + "\n")
    return out


def start(argv: list[str], env: dict | None = None) -> subprocess.Popen:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full, cwd=ROOT
    )


def last_step(log_dir: Path) -> int:
    path = log_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [m["step"] for m in read_jsonl(path) if m.get("event") == "train"]
    return max(steps, default=0)


def wait_for_step(proc: subprocess.Popen, log_dir: Path, step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while last_step(log_dir) < step:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"step {step} not reached in {timeout}s"
        time.sleep(0.05)


def stopped_event(stdout: str) -> dict:
    events = [json.loads(x) for x in stdout.splitlines() if x.startswith('{"event": "stopped"')]
    assert len(events) == 1, stdout[-2000:]
    return events[0]


def test_sigterm_snapshots_the_current_step_and_resume_is_exact(tmp_path, tiny_model, small_data):
    cfg_a, root_a = config(tmp_path, "uninterrupted", tiny_model, small_data, **NO_PERIODIC)
    run_ok(cfg_a)

    cfg_b, root_b = config(tmp_path, "preempted", tiny_model, small_data, **NO_PERIODIC)
    proc = start([sys.executable, "-m", "vlm_trainer.cli", "sft", "--config", str(cfg_b)])
    wait_for_step(proc, root_b.parent, 3)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)  # a second SIGTERM changes nothing
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]

    stop = stopped_event(out)["step"]
    assert 3 <= stop < 20 and last_step(root_b.parent) == stop  # stopped between two steps
    steps = ckpt.list_steps(root_b)
    assert [s for s, _ in steps] == [stop], steps  # the SIGTERM snapshot, and only it
    assert ckpt.verify(steps[0][1]) is None and not (root_b / "final").exists()
    assert not [p for p in root_b.iterdir() if p.name.startswith(".tmp-")]
    assert f"stopped on SIGTERM after step {stop}" in err

    resumed = run_ok(cfg_b)
    assert f"resumed from {steps[0][1]} at step {stop}" in resumed.stderr
    assert_same_weights(weights(root_a / "final"), weights(root_b / "final"))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, tiny_model, small_data) -> Path:
    """The final checkpoint of an uninterrupted 2-process run."""
    tmp = tmp_path_factory.mktemp("dist-a")
    cfg_a, root_a = config(tmp, "dist-a", tiny_model, small_data, **NO_PERIODIC)
    torchrun_ok(cfg_a)
    return root_a / "final"


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(
    tmp_path, tiny_model, small_data, two_processes
):
    """torchrun, 2 processes (DDP, gloo): only rank 1 gets SIGTERM; both ranks agree on the step
    (one all-reduce), write one sharded snapshot and exit 75; the resumed run ends with the
    weights of an uninterrupted 2-process run."""
    cfg_b, root_b = config(tmp_path, "dist-b", tiny_model, small_data, **NO_PERIODIC)
    argv = [TORCHRUN, "--nproc_per_node=2", f"--master-port={free_port()}"]
    proc = start([*argv, "-m", "vlm_trainer.cli", "sft", "--config", str(cfg_b)], DIST_ENV)
    wait_for_step(proc, root_b.parent, 3)
    workers = worker_pids(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[1], signal.SIGTERM)  # the highest pid: whichever rank, not both
    out, err = proc.communicate(timeout=240)
    assert proc.returncode != 0  # torchrun reports its workers' non-zero exit as a failure
    assert err.count(f"exitcode  : {EXIT_PREEMPTED}") >= 1 or f"exit code {EXIT_PREEMPTED}" in err

    stop = stopped_event(out)["step"]
    assert 3 <= stop < 20 and last_step(root_b.parent) == stop
    assert [s for s, _ in ckpt.list_steps(root_b)] == [stop]
    assert ckpt.verify(root_b / ckpt.step_name(stop)) is None

    torchrun_ok(cfg_b)
    assert_same_weights(weights(two_processes), weights(root_b / "final"))


def test_sigterm_to_the_pod_launcher_reaches_the_workers_and_exits_preempted(
    tmp_path, tiny_model, small_data, two_processes
):
    """``vlm_trainer.launch`` as PID 1 would be: SIGTERM to it (not to torchrun) is forwarded
    to the workers, which snapshot and stop; the launcher exits EXIT_PREEMPTED (torchrun
    itself exits 1 after failed workers), and the resumed run is exact."""
    cfg_b, root_b = config(tmp_path, "dist-c", tiny_model, small_data, **NO_PERIODIC)
    argv = [sys.executable, "-m", "vlm_trainer.launch", TORCHRUN, "--nproc_per_node=2"]
    argv += [f"--master-port={free_port()}", "-m", "vlm_trainer.cli", "sft", "--config", str(cfg_b)]
    proc = start(argv, DIST_ENV)
    wait_for_step(proc, root_b.parent, 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    assert "launch: workers stopped gracefully" in err

    stop = stopped_event(out)["step"]
    assert 3 <= stop < 20 and [s for s, _ in ckpt.list_steps(root_b)] == [stop]
    torchrun_ok(cfg_b)
    assert_same_weights(weights(two_processes), weights(root_b / "final"))


def worker_pids(parent: int) -> list[int]:
    """The processes torchrun started (its children), oldest first."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return sorted(int(c) for c in children)
