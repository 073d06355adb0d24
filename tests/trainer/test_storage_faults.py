"""Storage faults on a real, small filesystem (a tmpfs mounted by the test; needs root): a
checkpoint write that runs out of space removes its partial folder, keeps the older checkpoints
and fails with the bytes needed and free; ``vlm-trainer sft`` exits with ``EXIT_STORAGE_FULL``;
once there is room again the run resumes from the newest kept checkpoint, exactly."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from vlm_trainer import checkpoint as ckpt
from vlm_trainer.exit_codes import EXIT_STORAGE_FULL

from tests.trainer.helpers import run_cli
from tests.trainer.test_sft_resume import assert_same_weights, config, run_ok, weights

pytestmark = [pytest.mark.trainer]


@contextlib.contextmanager
def tmpfs(where: Path, size: int) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def resize(where: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


def _plain(out: Path, n: int) -> None:
    (out / "blob.bin").write_bytes(os.urandom(n))


def _safetensors(out: Path, n: int) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(n // 4)}, str(out / "model.safetensors"))


def _torch_save(out: Path, n: int) -> None:
    torch.save({"w": torch.zeros(n // 4)}, out / "state.pt")


@pytest.mark.unit
@pytest.mark.parametrize("writer", [_plain, _safetensors, _torch_save])
def test_a_full_disk_removes_the_partial_write_and_keeps_older_ones(tmp_path, writer):
    with tmpfs(tmp_path / "vol", 1 << 20) as root:
        first, _ = ckpt.write_checkpoint(root, "step-000001", lambda d: writer(d, 600_000), {}, 1)
        free_before = os.statvfs(root).f_bavail
        with pytest.raises(ckpt.SnapshotWriteError) as err:
            ckpt.write_checkpoint(root, "step-000002", lambda d: writer(d, 600_000), {}, 2)
        msg = str(err.value)
        assert "could not write checkpoint step-000002" in msg and "disk full" in msg, msg
        assert "it needs about 60" in msg and "checkpoints kept: step-000001" in msg, msg
        assert err.value.exit_code == EXIT_STORAGE_FULL
        assert sorted(p.name for p in root.iterdir()) == ["step-000001"]  # no .tmp-* left
        assert ckpt.verify(first) is None
        assert os.statvfs(root).f_bavail == free_before  # the partial bytes were given back


@pytest.mark.slow
def test_sft_on_a_full_volume_exits_storage_full_then_resumes_exactly(
    tmp_path, tiny_model, demo_data
):
    data = tmp_path / "data"
    data.mkdir()
    lines = (demo_data / "sft_train.jsonl").read_text().splitlines()[:40]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    evals = (demo_data / "sft_eval.jsonl").read_text().splitlines()[:8]
    (data / "eval.jsonl").write_text("\n".join(evals) + "\n")
    cfg_a, root_a = config(tmp_path, "roomy", tiny_model, data)
    run_ok(cfg_a)
    manifest = ckpt.read_manifest(ckpt.list_steps(root_a)[-1][1])
    snapshot = sum(f["size"] for f in manifest["files"].values())

    # Room for one step checkpoint (step 3) but not for the next one (step 6).
    with tmpfs(tmp_path / "vol", snapshot * 3 // 2) as vol:
        root_b = vol / "ck"
        cfg_b, _ = config(tmp_path, "full", tiny_model, data, checkpoint_dir=root_b)
        out = run_cli("sft", "--config", str(cfg_b))
        assert out.returncode == EXIT_STORAGE_FULL, out.stderr[-3000:]
        assert "could not write checkpoint step-000006" in out.stderr
        assert "disk full" in out.stderr and "checkpoints kept: step-000003" in out.stderr
        assert [p.name for p in root_b.iterdir()] == ["step-000003"]
        assert ckpt.verify(root_b / "step-000003") is None

        resize(vol, 64 << 20)
        resumed = run_ok(cfg_b)
        assert "resumed from" in resumed.stderr and "step-000003" in resumed.stderr
        assert_same_weights(weights(root_a / "final"), weights(root_b / "final"))
