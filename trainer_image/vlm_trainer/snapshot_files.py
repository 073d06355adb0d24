"""The on-disk pieces shared by ``checkpoint.py`` and ``storage.py``: the manifest format, file
hashing, fsync, and the rename that puts a finished local folder in place.

Supported: local filesystems with POSIX ``rename`` and ``fsync`` of directories (Linux). It
imports neither torch nor fsspec, so both the checkpoint code and the storage layer (which must
stay importable for local paths alone) can use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO, Any

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_HASH_CHUNK = 1 << 20


def sha256_stream(f: IO[bytes], chunk: int = _HASH_CHUNK) -> str:
    h = hashlib.sha256()
    while block := f.read(chunk):
        h.update(block)
    return h.hexdigest()


def sha256_file(path: Path, chunk: int = _HASH_CHUNK) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f, chunk)


def local_files(root: Path) -> dict[str, dict]:
    """``{relative path: {sha256, size}}`` of every file under ``root`` except the manifest."""
    return {
        str(p.relative_to(root)): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def full_manifest(staged: Path, manifest: dict, **fields: Any) -> dict:
    """The caller's ``manifest`` plus the format version, ``fields`` (name, step...), the
    creation time and the hashes of every file in ``staged``."""
    return {
        "format_version": FORMAT_VERSION,
        **manifest,
        **fields,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": local_files(staged),
    }


def names_mismatch(listed: dict, present: set[str]) -> str | None:
    """Why the files ``present`` differ from those the manifest lists (missing or extra ones,
    the first five named); None when the names match."""
    if missing := sorted(set(listed) - present):
        return f"missing files: {', '.join(missing[:5])}"
    if extra := sorted(present - set(listed)):
        return f"files not in the manifest: {', '.join(extra[:5])}"
    return None


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def fsync_path(p: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes its renames durable)."""
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for p in [*root.rglob("*"), root]:
        fsync_path(p)


def rename_into_place(tmp: Path, root: Path, name: str) -> Path:
    """Move the finished folder ``tmp`` to ``root/name``, replacing (never merging with) an
    existing folder of that name, e.g. a re-run that reaches the same step; fsyncs ``root``."""
    final = root / name
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{name}-", dir=root))
        os.rename(final, old / name)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_path(root)
    return final
