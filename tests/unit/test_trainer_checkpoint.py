"""Checkpoint files: atomic write, manifest verification, pruning, temp-folder cleanup, RNG."""

from __future__ import annotations

import json
import random

import pytest
import torch
from vlm_trainer import checkpoint as ckpt

pytestmark = pytest.mark.unit


def save(root, step, payload=b"weights"):
    def write(out):
        (out / "model.safetensors").write_bytes(payload + str(step).encode())
        (out / "sub").mkdir()
        (out / "sub" / "x.json").write_text("{}")
        ckpt.save_trainer_state(out, {"step": step})

    return ckpt.write_checkpoint(root, ckpt.step_name(step), write, {"job": "j", "type": "full"},
                                 step)  # fmt: skip


def test_write_verify_and_manifest(tmp_path):
    path, manifest = save(tmp_path, 5)
    assert path == tmp_path / "step-000005"
    assert ckpt.verify(path) is None
    on_disk = json.loads((path / "manifest.json").read_text())
    assert on_disk == manifest
    assert on_disk["step"] == 5 and on_disk["job"] == "j" and on_disk["type"] == "full"
    assert set(on_disk["files"]) == {"model.safetensors", "sub/x.json",
                                     "trainer_state/progress.json"}  # fmt: skip
    assert on_disk["files"]["model.safetensors"]["sha256"] == ckpt.sha256_file(
        path / "model.safetensors"
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize(
    "damage,reason",
    [
        (lambda p: (p / "model.safetensors").write_bytes(b"weightz5"), "sha256 mismatch"),
        (lambda p: (p / "model.safetensors").write_bytes(b"w"), "size"),
        (lambda p: (p / "sub" / "x.json").unlink(), "missing files: sub/x.json"),
        (lambda p: (p / "extra.bin").write_bytes(b"?"), "not in the manifest: extra.bin"),
        (lambda p: (p / "manifest.json").unlink(), "no readable manifest"),
        (lambda p: (p / "manifest.json").write_text("{trunc"), "no readable manifest"),
    ],
)
def test_damaged_checkpoints_do_not_verify(tmp_path, damage, reason):
    path, _ = save(tmp_path, 1)
    damage(path)
    assert reason in ckpt.verify(path)


def test_latest_verified_skips_broken_and_temp(tmp_path):
    save(tmp_path, 2)
    newest, _ = save(tmp_path, 4)
    (newest / "model.safetensors").write_bytes(b"garbage!")
    (tmp_path / ".tmp-step-000006-abc").mkdir()  # an interrupted write
    (tmp_path / ".tmp-step-000006-abc" / "model.safetensors").write_bytes(b"half")
    logs = []
    assert ckpt.latest_verified(tmp_path, log=logs.append) == tmp_path / "step-000002"
    assert "step-000004" in logs[0]
    assert [p.name for p in ckpt.clean_temp(tmp_path)] == [".tmp-step-000006-abc"]
    assert ckpt.latest_verified(tmp_path / "nothing-here") is None


def test_prune_keeps_newest(tmp_path):
    for s in (1, 2, 3, 10):
        save(tmp_path, s)
    removed = ckpt.prune(tmp_path, keep_last=2)
    assert [p.name for p in removed] == ["step-000001", "step-000002"]
    assert [p.name for _, p in ckpt.list_steps(tmp_path)] == ["step-000003", "step-000010"]
    assert ckpt.prune(tmp_path, keep_last=0) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000003", "step-000010"]


def test_rewriting_a_step_replaces_it(tmp_path):
    save(tmp_path, 3, b"old")
    path, _ = save(tmp_path, 3, b"new")
    assert (path / "model.safetensors").read_bytes() == b"new3"
    assert ckpt.verify(path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000003"]


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1)
    random.seed(2)
    state = ckpt.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    a = (torch.rand(3), random.random())
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    b = (torch.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
