"""One storage layer for datasets, snapshots and promoted models: local paths and object stores.

Every location is a URI or a path handed to fsspec: a plain path or ``file://`` (a PVC is a
mounted path inside the pod), ``s3://bucket/key`` through ``s3fs``; ``gs://`` and ``az://`` go
through the same calls once ``gcsfs``/``adlfs`` are installed (nothing here is S3-specific
except the credentials below). What it offers:

- ``open_read`` / ``iter_lines``: a seekable binary stream read in blocks of ``BLOCK_SIZE``, so
  a JSONL of any size is read line by line without ever being held whole in memory.
- ``write_snapshot``: a folder written atomically; ``manifest.json`` (a sha256 and size per
  file, the same format ``checkpoint.py`` writes) is the commit and is written last.
  On a local filesystem the folder is filled under ``<root>/.tmp-<name>-*`` and renamed into
  place. Object stores have no rename (a copy would double the upload), so there the files go
  straight to ``<root>/<name>/`` and the prefix stays uncommitted (invisible to readers) until
  its manifest, one PUT, exists; a rewrite of an existing name deletes the old manifest first.
- ``list_snapshots`` / ``verify_snapshot``: readers never trust a prefix without a manifest
  whose files are all present with the listed sizes (``deep=True`` also re-hashes them).
- ``delete_snapshot`` (manifest first, so a half-deleted snapshot is never listed),
  ``clean_uncommitted`` (what interrupted writes left), ``upload_dir`` / ``download_dir`` (staging
  and promotion), ``download_snapshot`` (a copy verified against its manifest).

Credentials come only from the standard AWS environment: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``/``AWS_REGION`` and
``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` (an S3-compatible store such as SeaweedFS, MinIO
or Ceph). Without keys in the environment botocore's own chain applies (web identity, instance
profile). Errors become ``StorageError`` subclasses whose message names the URI.

How ``checkpoint.py`` will use it (not wired yet): ``write_checkpoint(root, name, write_files,
manifest, step)`` becomes ``write_snapshot(root_uri, name, write_files, manifest)`` (the
``during_checkpoint`` fault point moves into the ``before_commit`` hook);
``latest_verified(root)`` becomes the newest ``list_snapshots(root_uri, deep=True)`` entry named
``step-*``; ``prune`` deletes with ``delete_snapshot``; ``clean_temp`` becomes
``clean_uncommitted``; resume from an object store calls ``download_snapshot`` into a local
folder and loads from there. The data readers open datasets with ``open_read`` (``LineIndex``
seeks into the returned stream).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .snapshot_files import (
    MANIFEST,
    fsync_tree,
    full_manifest,
    manifest_bytes,
    names_mismatch,
    rename_into_place,
    sha256_stream,
)

BLOCK_SIZE = 8 << 20  # bytes fetched per read from an object store: bounds streaming memory


# ------------------------------------------------------------------------------------------------
# Errors


class StorageError(OSError):
    """A storage operation failed; the message names the URI and the cause."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"{uri}: {reason}")
        self.uri = uri
        self.reason = reason


class NotFound(StorageError, FileNotFoundError):
    """The object, folder or bucket does not exist."""


class AccessDenied(StorageError, PermissionError):
    """The credentials are missing, wrong, or not allowed to do this."""


class UnsupportedURI(StorageError, ValueError):
    """A scheme no installed fsspec backend serves."""


_DENIED_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden")


def _translate(uri: str, e: BaseException) -> StorageError:
    """Map backend exceptions onto the three kinds callers act on, keeping the backend's words."""
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, StorageError):
        return e
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return NotFound(uri, f"bucket does not exist ({text})")
    if isinstance(e, PermissionError) or any(c in text for c in _DENIED_CODES):
        return AccessDenied(uri, f"access denied, check the AWS_* credentials ({text})")
    if isinstance(e, FileNotFoundError) or "NoSuchKey" in text:
        return NotFound(uri, "no such object or folder")
    return StorageError(uri, text)


@contextmanager
def _errors(uri: str) -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
    except Exception as e:  # backends raise botocore/aiohttp/OSError types alike
        raise _translate(uri, e) from e


# ------------------------------------------------------------------------------------------------
# Locations


def _s3_options() -> dict[str, Any]:
    """s3fs options from the AWS_* environment, passed explicitly so that fsspec's instance cache
    (keyed by these options) never hands out a filesystem built for other credentials."""
    env = os.environ
    opts: dict[str, Any] = {}
    if env.get("AWS_ACCESS_KEY_ID"):
        opts["key"] = env["AWS_ACCESS_KEY_ID"]
        opts["secret"] = env.get("AWS_SECRET_ACCESS_KEY", "")
        if env.get("AWS_SESSION_TOKEN"):
            opts["token"] = env["AWS_SESSION_TOKEN"]
    client: dict[str, str] = {}
    if endpoint := env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"):
        client["endpoint_url"] = endpoint
    if region := env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION"):
        client["region_name"] = region
    if client:
        opts["client_kwargs"] = client
    return opts


def resolve(uri: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem serving ``uri`` and the path within it."""
    uri = os.fspath(uri)
    scheme = uri.split("://", 1)[0] if "://" in uri else "file"
    opts = _s3_options() if scheme in ("s3", "s3a") else {}
    try:
        return fsspec.core.url_to_fs(uri, **opts)
    except (ValueError, ImportError) as e:
        raise UnsupportedURI(uri, f"unsupported storage scheme {scheme!r} ({e})") from e


def is_local(uri: str | os.PathLike) -> bool:
    return isinstance(resolve(uri)[0], LocalFileSystem)


def join(uri: str | os.PathLike, *parts: str) -> str:
    return "/".join([os.fspath(uri).rstrip("/"), *(p.strip("/") for p in parts)])


# ------------------------------------------------------------------------------------------------
# Reading and writing single objects


def open_read(uri: str | os.PathLike, block_size: int = BLOCK_SIZE) -> IO[bytes]:
    """A seekable binary stream. Object stores are read with one ranged GET per ``block_size``
    bytes, buffered by ``io.BufferedReader`` (fsspec's own ``readline`` re-reads a whole block
    per line); random access to short records (a line index) wants a smaller ``block_size``."""
    fs, path = resolve(uri)
    with _errors(os.fspath(uri)):
        if isinstance(fs, LocalFileSystem):
            return open(path, "rb")
        raw = fs.open(path, "rb", block_size=block_size, cache_type="none")
        return io.BufferedReader(raw, buffer_size=block_size)


def iter_lines(uri: str | os.PathLike) -> Iterator[bytes]:
    """Yield each line (with its newline); memory holds one block and one line at a time."""
    with open_read(uri) as f, _errors(os.fspath(uri)):
        yield from f


def read_bytes(uri: str | os.PathLike) -> bytes:
    fs, path = resolve(uri)
    with _errors(os.fspath(uri)):
        return fs.cat_file(path)


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write one object whole: a single PUT on object stores, write + rename on local disks."""
    fs, path = resolve(uri)
    with _errors(os.fspath(uri)):
        if isinstance(fs, LocalFileSystem):
            _write_local_atomic(Path(path), data)
        else:
            fs.pipe_file(path, data)


def exists(uri: str | os.PathLike) -> bool:
    """Whether an object or a non-empty prefix is there now (another process may have written
    or deleted it: s3fs's listing cache is dropped first)."""
    fs, path = resolve(uri)
    with _errors(os.fspath(uri)):
        fs.invalidate_cache(path)
        return fs.exists(path)


def _write_local_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _files(fs: fsspec.AbstractFileSystem, prefix: str) -> dict[str, int]:
    """``{relative path: size}`` of every object under ``prefix`` (empty if there is none)."""
    if not fs.exists(prefix):
        return {}
    found = fs.find(prefix, detail=True)
    base = prefix.rstrip("/") + "/"
    return {p[len(base) :]: int(info["size"]) for p, info in found.items() if p.startswith(base)}


# ------------------------------------------------------------------------------------------------
# Folders: staging down, promotion up


def upload_file(local: Path, uri: str | os.PathLike) -> None:
    """Copy one local file to ``uri`` (multipart on object stores, so any size streams)."""
    fs, path = resolve(uri)
    with _errors(os.fspath(uri)):
        if isinstance(fs, LocalFileSystem):
            fs.makedirs(os.path.dirname(path), exist_ok=True)
        fs.put_file(str(local), path)


def upload_dir(local: Path, uri: str | os.PathLike) -> list[str]:
    """Copy every file under ``local`` to ``uri/<relative path>``; returns the relative paths."""
    rels = sorted(str(p.relative_to(local)) for p in Path(local).rglob("*") if p.is_file())
    for rel in rels:
        upload_file(Path(local) / rel, join(uri, rel))
    return rels


def download_dir(uri: str | os.PathLike, local: Path) -> list[str]:
    """Copy every object under ``uri`` into ``local``; returns the relative paths."""
    fs, root = resolve(uri)
    with _errors(os.fspath(uri)):
        fs.invalidate_cache(root)
        files = _files(fs, root)
        if not files:
            raise NotFound(os.fspath(uri), "no such folder (nothing under this prefix)")
        for rel in sorted(files):
            dst = Path(local) / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{root.rstrip('/')}/{rel}", str(dst))
    return sorted(files)


# ------------------------------------------------------------------------------------------------
# Snapshots: a folder whose manifest, written last, is the commit


@dataclass(frozen=True)
class Snapshot:
    name: str
    uri: str
    manifest: dict


def write_snapshot(
    root: str | os.PathLike,
    name: str,
    write_files: Callable[[Path], None],
    manifest: dict,
    *,
    staging_dir: str | None = None,
    before_commit: Callable[[], None] | None = None,
) -> Snapshot:
    """Write the snapshot ``root/name`` atomically and return it.

    ``write_files(folder)`` fills a local folder (inside ``root`` when it is local, else under
    ``staging_dir``/``$TMPDIR``, removed afterwards); a sha256 per file goes into the manifest,
    which is written last. ``before_commit`` runs after every file is in place and before the
    manifest (the fault-injection point). A crash anywhere before the manifest leaves nothing
    that ``list_snapshots`` returns."""
    fs, root_path = resolve(root)
    if isinstance(fs, LocalFileSystem):
        return _write_local_snapshot(Path(root_path), name, write_files, manifest, before_commit)
    staged = Path(tempfile.mkdtemp(prefix=f"vlm-snapshot-{name}-", dir=staging_dir))
    try:
        write_files(staged)
        full = full_manifest(staged, manifest, name=name)
        target = join(root, name)
        with _errors(target):
            _delete_remote(fs, f"{root_path.rstrip('/')}/{name}")  # never merge with an old one
        upload_dir(staged, target)
        if before_commit:
            before_commit()
        write_bytes(join(target, MANIFEST), manifest_bytes(full))
        return Snapshot(name, target, full)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _write_local_snapshot(
    root: Path,
    name: str,
    write_files: Callable[[Path], None],
    manifest: dict,
    before_commit: Callable[[], None] | None,
) -> Snapshot:
    """Fill ``.tmp-<name>-*``, add the manifest, fsync, rename into place (replacing, never
    merging with, an existing snapshot of the same name)."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    write_files(tmp)
    full = full_manifest(tmp, manifest, name=name)
    if before_commit:
        before_commit()
    _write_local_atomic(tmp / MANIFEST, manifest_bytes(full))
    fsync_tree(tmp)
    return Snapshot(name, str(rename_into_place(tmp, root, name)), full)


def read_manifest(uri: str | os.PathLike) -> dict | None:
    """The snapshot's manifest, or None when it has none (uncommitted) or it is unreadable."""
    try:
        return json.loads(read_bytes(join(uri, MANIFEST)))
    except NotFound:
        return None
    except (StorageError, ValueError) as e:
        if isinstance(e, AccessDenied):
            raise  # wrong credentials must not look like "no snapshots"
        return None


def verify_snapshot(uri: str | os.PathLike, deep: bool = False) -> str | None:
    """``None`` if the manifest exists and every file is present with its size and nothing
    else is there (``deep`` also re-hashes each file); otherwise the reason."""
    manifest = read_manifest(uri)
    if manifest is None:
        return "no readable manifest.json (uncommitted or not a snapshot)"
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed:
        return "manifest lists no files"
    fs, path = resolve(uri)
    with _errors(os.fspath(uri)):
        fs.invalidate_cache(path)
        present = {k: v for k, v in _files(fs, path).items() if k != MANIFEST}
    if mismatch := names_mismatch(listed, set(present)):
        return mismatch
    for rel, meta in sorted(listed.items()):
        if present[rel] != meta.get("size"):
            return f"{rel}: size {present[rel]} != {meta.get('size')}"
        if deep:
            with open_read(join(uri, rel)) as f, _errors(join(uri, rel)):
                if sha256_stream(f) != meta.get("sha256"):
                    return f"{rel}: sha256 mismatch"
    return None


def _children(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """Names of the folders (common prefixes) directly under ``root``, from a fresh listing."""
    fs.invalidate_cache(root)
    if not fs.exists(root):
        return []
    infos = fs.ls(root, detail=True)
    return sorted(
        i["name"].rstrip("/").rsplit("/", 1)[-1] for i in infos if i["type"] == "directory"
    )


def list_snapshots(
    root: str | os.PathLike, deep: bool = False, log: Callable[[str], None] | None = None
) -> list[Snapshot]:
    """Committed snapshots under ``root`` that verify, by name (``step-000050`` sorts by step).
    Prefixes without a manifest are skipped silently (being written, or abandoned); ones whose
    manifest does not verify are reported through ``log``."""
    fs, root_path = resolve(root)
    with _errors(os.fspath(root)):
        names = _children(fs, root_path)
    out = []
    for name in (n for n in names if not n.startswith(".")):
        uri = join(root, name)
        manifest = read_manifest(uri)
        if manifest is None:
            continue
        reason = verify_snapshot(uri, deep=deep)
        if reason is None:
            out.append(Snapshot(name, uri, manifest))
        elif log:
            log(f"snapshot {uri} does not verify ({reason}); skipped")
    return out


def delete_snapshot(uri: str | os.PathLike) -> None:
    """Delete a snapshot, manifest first, so a crash mid-delete never leaves one that lists."""
    fs, path = resolve(uri)
    with _errors(os.fspath(uri)):
        if isinstance(fs, LocalFileSystem):
            p = Path(path)
            if p.exists():
                trash = p.with_name(f".tmp-deleting-{p.name}")
                os.rename(p, trash)
                shutil.rmtree(trash, ignore_errors=True)
        else:
            _delete_remote(fs, path)


def _delete_remote(fs: fsspec.AbstractFileSystem, path: str) -> None:
    fs.invalidate_cache(path)
    if fs.exists(f"{path}/{MANIFEST}"):
        fs.rm_file(f"{path}/{MANIFEST}")
    if fs.exists(path):
        fs.rm(path, recursive=True)


def clean_uncommitted(root: str | os.PathLike) -> list[str]:
    """Remove what interrupted writes left under ``root`` (prefixes without a manifest and
    ``.tmp-*``/``.old-*`` folders); returns their URIs. Call it only while no writer runs."""
    fs, root_path = resolve(root)
    with _errors(os.fspath(root)):
        names = _children(fs, root_path)
    stale = [
        join(root, n)
        for n in names
        if n.startswith((".tmp-", ".old-")) or read_manifest(join(root, n)) is None
    ]
    for uri in stale:
        s_fs, s_path = resolve(uri)
        with _errors(uri):
            s_fs.rm(s_path, recursive=True)
    return stale


def download_snapshot(uri: str | os.PathLike, local: Path) -> dict:
    """Copy a committed snapshot into ``local`` (a fresh folder) and verify every file there
    against its manifest; returns the manifest. Resume and staging read from this copy."""
    manifest = read_manifest(uri)
    if manifest is None:
        raise NotFound(os.fspath(uri), "no committed snapshot here (no manifest.json)")
    download_dir(uri, local)
    for rel, meta in manifest.get("files", {}).items():
        with open(local / rel, "rb") as f:
            if sha256_stream(f) != meta.get("sha256"):
                raise StorageError(join(uri, rel), "sha256 mismatch after download")
    return manifest
