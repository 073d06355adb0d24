"""A checkpoint volume that fills up, and a dataset made of every kind of bad line.

The full volume is real: a tmpfs (root mounts it) sized for one snapshot and a half, so the
first snapshot fits and the second cannot. The trainer must remove the partial folder, keep the
first snapshot intact and exit 74 (storage full: the Job fails at once, reason StorageFull)
instead of crashing into the same wall on every retry. The bad-data corpus goes through a
TrainerJob: DataInvalid, not retried, every reported line one of the bad ones."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest
from vlm_trainer import checkpoint as ckpt
from vlm_trainer.demo_data import bad_sft_lines
from vlm_trainer.exit_codes import EXIT_STORAGE_FULL

from tests.cluster.local import LocalCluster
from tests.faults.trainer_runs import EVERY, config, run
from tests.integration.operator_env import (
    DEMO_CLAIM,
    Operator,
    apply,
    condition,
    finished,
    get,
    trainer_job,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]


@contextlib.contextmanager
def tmpfs(where: Path, size: int):
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@pytest.mark.trainer
def test_full_checkpoint_volume_keeps_the_last_snapshot_and_fails_fast(
    tmp_path, tiny_model, data, reference, record
) -> None:
    one = tree_bytes(reference.parent / ckpt.step_name(EVERY))
    with tmpfs(tmp_path / "vol", int(one * 1.5) + (1 << 20)) as vol:
        cfg, root = config(vol, "full", tiny_model, data)
        code, events, out = run(cfg)
        assert code == EXIT_STORAGE_FULL, out[-3000:]
        assert "disk full" in out and "bytes" in out, out[-3000:]
        assert [p.name for _, p in ckpt.list_steps(root)] == [ckpt.step_name(EVERY)]
        assert ckpt.verify(root / ckpt.step_name(EVERY)) is None
        assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
        reached = max(e["step"] for e in events if e.get("event") == "train")
        record(fault="checkpoint volume full", at_step=reached, resumed_from=EVERY,
               steps_lost=reached - EVERY, outcome=f"exit {code}")  # fmt: skip


@pytest.mark.integration
def test_bad_data_corpus_fails_the_job_once_with_line_numbers(
    cluster: LocalCluster, demo_ns: str, operator: Operator, record
) -> None:
    lines = bad_sft_lines()
    bad = {i + 1 for i, (_, why) in enumerate(lines) if why}
    corpus = cluster.pvc_root / demo_ns / DEMO_CLAIM / "data" / "corpus.jsonl"
    corpus.write_text("\n".join(line for line, _ in lines) + "\n")
    spec = {"dataset": {"uri": f"pvc://{DEMO_CLAIM}/data/corpus.jsonl"}, "backoffLimit": 3}
    apply(cluster, demo_ns, trainer_job("corpus", **spec))
    tj = finished(cluster, demo_ns, "corpus")
    failed = condition(tj, "Failed")
    assert failed["reason"] == "DataInvalid" and tj["status"]["attempts"] == 1, tj["status"]
    reported = {
        int(part.split(":")[1])
        for part in failed["message"].split()
        if part.startswith("/") and "corpus.jsonl:" in part and part.split(":")[1].isdigit()
    }
    assert reported and reported <= bad, (sorted(reported), sorted(bad))
    assert (get(cluster, "ckpt", "-n", demo_ns) or {}).get("items") == []
    record(fault=f"bad-data corpus ({len(bad)} bad lines)", steps_lost=0,
           outcome="Failed/DataInvalid, 1 attempt", lines_in_message=len(reported))  # fmt: skip
