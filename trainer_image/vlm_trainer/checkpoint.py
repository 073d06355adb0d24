"""Checkpoints: atomic writes, manifests with a sha256 per file, verification, resume, pruning.

Layout under the checkpoint root (``<log_path>/checkpoints`` by default)::

    step-000050/                  every save_every_steps (keep_last newest are kept)
      config.json model.safetensors ...     HF full model, or adapter_config.json +
                                            adapter_model.safetensors for LoRA
      tokenizer.json processor_config.json chat_template.jinja ...   the processor
      trainer_state/state.pt      optimizer, scheduler and RNG states (torch.save, tensors only)
      trainer_state/progress.json step, epoch, data position, counters
      manifest.json               job, job_uid, name, step, type (full|lora), base_model, metrics,
                                  files: {relative path: {sha256, size}}; written last
    final/                        same, without optimizer/scheduler/RNG (training is over)

A checkpoint is written into ``.tmp-<name>-*`` in the same root, fsynced, then renamed into
place, so a crash at any moment leaves either the whole checkpoint or a ``.tmp-*`` folder
that nothing mistakes for one (``latest_verified`` ignores and ``clean_temp`` removes them).
``verify`` re-hashes every file against the manifest; resume uses the newest step that verifies
and whose manifest names this run's job UID (``job_uid``: the TrainerJob's ``metadata.uid``), so
a job re-created under a reused name never continues an earlier job's run.
A write that fails (disk full, or any other I/O error) removes its ``.tmp-*`` folder, keeps every
older checkpoint and raises ``SnapshotWriteError`` (bytes needed vs free): the CLI exits with
``exit_codes.EXIT_STORAGE_FULL``, which the operator does not retry into the same wall.

``VLM_TRAINER_FAULT=<point>:<step>`` makes the process SIGKILL itself at a named point
(``after_checkpoint``, ``during_checkpoint``); the resume tests use it to kill at an exact
moment. It does nothing unless set.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from .exit_codes import EXIT_STORAGE_FULL
from .snapshot_files import (
    MANIFEST,
    fsync_tree,
    full_manifest,
    manifest_bytes,
    names_mismatch,
    rename_into_place,
    sha256_file,
)

STATE_DIR = "trainer_state"
FINAL = "final"
_STEP_RE = re.compile(r"^step-(\d+)$")


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def fault_point(point: str, step: int) -> None:
    """SIGKILL this process if ``VLM_TRAINER_FAULT`` names this point and step (tests only)."""
    if os.environ.get("VLM_TRAINER_FAULT") == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------------------------
# Writing


class SnapshotWriteError(Exception):
    """A checkpoint could not be written; its partial folder is gone, older ones are kept."""

    exit_code = EXIT_STORAGE_FULL


# How libraries that do not raise OSError report a failed write (safetensors' Rust IoError,
# torch.save's C++ stream: "basic_ios::clear: iostream error"), besides the OS's own words.
_WRITE_ERROR_WORDS = ("no space left", "os error", "ioerror", "iostream error", "disk quota")


def _is_write_error(e: BaseException | None) -> bool:
    seen = 0
    while e is not None and seen < 8:  # the exception and what caused it
        if isinstance(e, OSError) or any(w in str(e).lower() for w in _WRITE_ERROR_WORDS):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _release(e: BaseException | None) -> None:
    """Drop the local variables of the failed write's frames: a writer's open file (torch.save
    leaves one) would otherwise hold the deleted bytes until garbage collection."""
    for _ in range(8):
        if e is None:
            return
        traceback.clear_frames(e.__traceback__)
        e = e.__cause__ or e.__context__


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def _write_error(root: Path, name: str, e: BaseException, written: int) -> SnapshotWriteError:
    """The message of a failed write, measured after the partial folder was removed."""
    kept = [p for _, p in list_steps(root)]
    newest = (read_manifest(kept[-1]) or {}).get("files", {}) if kept else {}
    previous = sum(int(f.get("size", 0)) for f in newest.values())
    needed = max(written, previous)
    basis = "the size of the newest snapshot" if previous >= written else "written before failing"
    usage = shutil.disk_usage(root)
    # A library may hide ENOSPC behind its own words: fewer free bytes than needed says it too.
    full = "no space left" in str(e).lower() or getattr(e, "errno", None) == 28
    full = full or usage.free < needed
    what = "disk full" if full else f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    return SnapshotWriteError(
        f"could not write checkpoint {name} under {root} ({what}): it needs about {needed} "
        f"bytes ({basis}), {usage.free} of {usage.total} bytes are free. The partial folder was "
        f"removed; checkpoints kept: {', '.join(p.name for p in kept) or 'none'}. Free space or "
        "enlarge the volume, then restart: training resumes from the newest kept checkpoint"
    )


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_checkpoint(
    root: Path, name: str, write_files: Callable[[Path], None], manifest: dict, step: int
) -> tuple[Path, dict]:
    """Write a checkpoint atomically: ``write_files(tmp_dir)`` fills a temp folder, the manifest
    (with a sha256 per file) is added, everything is fsynced, then the folder is renamed to
    ``root/name``. Returns the final path and the manifest."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}-unborn"
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
        write_files(tmp)
        fault_point("during_checkpoint", step)
        manifest = full_manifest(tmp, manifest, name=name, step=step)
        (tmp / MANIFEST).write_bytes(manifest_bytes(manifest))
        fsync_tree(tmp)
    except Exception as e:
        written = _tree_bytes(tmp)
        _release(e)
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_write_error(e):
            raise _write_error(root, name, e, written) from e
        raise
    final = rename_into_place(tmp, root, name)
    fault_point("after_checkpoint", step)
    return final, manifest


# ------------------------------------------------------------------------------------------------
# Reading


def read_manifest(path: Path) -> dict | None:
    try:
        return json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def verify(path: Path) -> str | None:
    """``None`` if every file matches the manifest (and no file is missing or extra), else why."""
    manifest = read_manifest(path)
    if manifest is None:
        return "no readable manifest.json"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "manifest lists no files"
    present = {str(p.relative_to(path)) for p in _files(path)}
    if mismatch := names_mismatch(files, present):
        return mismatch
    for rel, meta in files.items():
        p = path / rel
        if p.stat().st_size != meta.get("size"):
            return f"{rel}: size {p.stat().st_size} != {meta.get('size')}"
        if sha256_file(p) != meta.get("sha256"):
            return f"{rel}: sha256 mismatch"
    return None


def list_steps(root: Path) -> list[tuple[int, Path]]:
    """``step-*`` checkpoints (whole or not), oldest first."""
    if not root.is_dir():
        return []
    out = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_RE.match(p.name))]
    return sorted(out)


def foreign(path: Path, job_uid: str | None) -> str | None:
    """Why the checkpoint belongs to another run (its manifest names another job UID), or None.

    Without a UID to compare (a run outside Kubernetes) every checkpoint is this run's."""
    if job_uid is None:
        return None
    theirs = (read_manifest(path) or {}).get("job_uid")
    return None if theirs == job_uid else f"written for job uid {theirs}, this run is {job_uid}"


def usable(path: Path, job_uid: str | None = None) -> str | None:
    """``None`` if the checkpoint verifies and belongs to this run, else why not."""
    return verify(path) or foreign(path, job_uid)


def latest_verified(
    root: Path, log: Callable[[str], None] = print, job_uid: str | None = None
) -> Path | None:
    """The newest ``step-*`` checkpoint that verifies (and, given ``job_uid``, was written for
    that job); the others are reported and skipped."""
    for _, path in reversed(list_steps(root)):
        reason = usable(path, job_uid)
        if reason is None:
            return path
        log(f"checkpoint {path} is not usable ({reason}); trying an older one")
    return None


def clean_temp(root: Path) -> list[Path]:
    """Remove ``.tmp-*``/``.old-*`` folders left by interrupted writes; returns what was removed."""
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def prune(
    root: Path,
    keep_last: int,
    may_delete: Callable[[Path], bool] | None = None,
    keep: frozenset[str] | set[str] = frozenset(),
) -> list[Path]:
    """Delete all but the ``keep_last`` newest ``step-*`` checkpoints (0 keeps all) and the
    ones named in ``keep``.

    ``may_delete(path)`` is asked first for each one and keeps it when False: the reporter marks
    the snapshot's Checkpoint object pruned there, and refuses for one with a promotion
    requested or done, so no Checkpoint ever points at deleted files."""
    steps = list_steps(root)
    if keep_last <= 0 or len(steps) <= keep_last:
        return []
    doomed = [
        p
        for _, p in steps[:-keep_last]
        if p.name not in keep and (may_delete is None or may_delete(p))
    ]
    for p in doomed:
        # Rename first so a crash mid-delete never leaves a half-deleted step-* folder.
        trash = root / f".tmp-deleting-{p.name}"
        os.rename(p, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


# ------------------------------------------------------------------------------------------------
# Trainer state (what exact resume needs beyond the weights)


def rng_state() -> dict:
    state = {"python": _py_state_to_tensor(random.getstate()), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        _, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {
            "keys": torch.from_numpy(keys.astype("int64")),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        }
    except ImportError:
        pass
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_py_state_from_tensor(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        s = state["numpy"]
        keys = s["keys"].numpy().astype("uint32")
        np.random.set_state(("MT19937", keys, s["pos"], s["has_gauss"], s["cached"]))


def _py_state_to_tensor(st) -> dict:
    version, internal, gauss = st
    return {
        "version": version,
        "internal": torch.tensor(internal, dtype=torch.int64),
        "gauss": gauss,
    }


def _py_state_from_tensor(d: dict):
    return d["version"], tuple(int(x) for x in d["internal"].tolist()), d["gauss"]


def save_trainer_state(out: Path, progress: dict, optimizer=None, scheduler=None) -> None:
    """Write ``progress.json``, and ``state.pt`` (optimizer, scheduler, RNG) when given."""
    d = out / STATE_DIR
    d.mkdir(parents=True, exist_ok=True)
    (d / "progress.json").write_text(json.dumps(progress, indent=2, sort_keys=True) + "\n")
    if optimizer is not None:
        state = {"optimizer": optimizer.state_dict(), "rng": rng_state()}
        if scheduler is not None:
            state["scheduler"] = scheduler.state_dict()
        torch.save(state, d / "state.pt")


def load_trainer_state(path: Path) -> tuple[dict, dict | None]:
    """``(progress, state)`` of a checkpoint; ``state`` is None when there is no ``state.pt``."""
    d = path / STATE_DIR
    progress = json.loads((d / "progress.json").read_text())
    state_file = d / "state.pt"
    state = (
        torch.load(state_file, map_location="cpu", weights_only=True)
        if state_file.exists()
        else None
    )
    return progress, state
