"""The trainer killed again and again: SIGKILL at random steps loses at most one snapshot
interval each time, SIGTERM loses nothing (the trainer snapshots at the step it reached and
exits 75), a kill in the middle of a snapshot write leaves nothing that looks whole; every
interrupted run ends with weights equal (torch.equal) to the uninterrupted one.

The random steps come from a seeded generator (`VLM_FAULTS_SEED`, default 12) so a failure can
be replayed; the seed is in the assertion messages."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
from vlm_trainer import checkpoint as ckpt
from vlm_trainer.exit_codes import EXIT_PREEMPTED

from tests.faults.trainer_runs import EVERY, SEED, STEPS, config, resumed, run, steps
from tests.integration.resume_checks import assert_same_weights

pytestmark = [pytest.mark.faults, pytest.mark.trainer, pytest.mark.slow]


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
        assert max(lost) <= EVERY, f"seed {SEED}: lost {lost} steps, snapshot every {EVERY}"
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
