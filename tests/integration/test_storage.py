"""vlm_trainer.storage against a real S3 server (SeaweedFS, the `s3_server` fixture) and against
the local filesystem, through the same calls: round trips, streaming with bounded memory,
snapshots that only exist once their manifest does (also when the writer is SIGKILLed
mid-upload), and errors that name the URI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from vlm_trainer import storage

from tests.cluster.launcher import PYTHONPATH

pytestmark = pytest.mark.integration


@pytest.fixture(params=["file", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "s3":
        return request.getfixturevalue("s3_root")
    return str(tmp_path / "store")


def _files(contents: dict[str, bytes]):
    def write(folder: Path) -> None:
        for rel, data in contents.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)

    return write


CONTENTS = {
    "config.json": b'{"a": 1}\n',
    "model.safetensors": os.urandom(3 << 20),
    "trainer_state/progress.json": b'{"step": 5}\n',
}


def test_snapshot_round_trip(root: str, tmp_path: Path) -> None:
    snap = storage.write_snapshot(root, "step-000005", _files(CONTENTS), {"step": 5})
    assert snap.manifest["files"]["model.safetensors"]["size"] == 3 << 20
    listed = storage.list_snapshots(root, deep=True)
    assert [(s.name, s.manifest["step"]) for s in listed] == [("step-000005", 5)]
    manifest = storage.download_snapshot(listed[0].uri, tmp_path / "copy")
    assert manifest == snap.manifest
    for rel, data in CONTENTS.items():
        assert (tmp_path / "copy" / rel).read_bytes() == data
    with storage.open_read(storage.join(snap.uri, "model.safetensors")) as f:
        f.seek(1 << 20)
        assert f.read(16) == CONTENTS["model.safetensors"][1 << 20 : (1 << 20) + 16]

    # A rewrite of the same name replaces the snapshot; it never merges with the old files.
    storage.write_snapshot(root, "step-000005", _files({"only.bin": b"x"}), {"step": 5})
    (again,) = storage.list_snapshots(root, deep=True)
    assert set(again.manifest["files"]) == {"only.bin"}
    storage.delete_snapshot(again.uri)
    assert storage.list_snapshots(root) == []
    # No object is left (SeaweedFS may show the emptied folder itself for a moment).
    assert _uncommitted_objects(root, "step-000005") == []


def test_folder_upload_download(root: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _files(CONTENTS)(src)
    assert storage.upload_dir(src, storage.join(root, "model")) == sorted(CONTENTS)
    assert storage.download_dir(storage.join(root, "model"), tmp_path / "dst") == sorted(CONTENTS)
    for rel, data in CONTENTS.items():
        assert (tmp_path / "dst" / rel).read_bytes() == data


def test_tampered_snapshot_is_not_listed(root: str) -> None:
    snap = storage.write_snapshot(root, "step-000001", _files(CONTENTS), {"step": 1})
    same_size = b'{"a": 2}\n'
    storage.write_bytes(storage.join(snap.uri, "config.json"), same_size)
    assert storage.verify_snapshot(snap.uri) is None  # sizes still match
    assert storage.verify_snapshot(snap.uri, deep=True) == "config.json: sha256 mismatch"
    assert storage.list_snapshots(root, deep=True) == []
    storage.write_bytes(storage.join(snap.uri, "extra.bin"), b"?")
    assert "files not in the manifest: extra.bin" in storage.verify_snapshot(snap.uri)
    assert storage.list_snapshots(root) == []


STREAM_CHILD = textwrap.dedent(
    """
    import json, sys
    from vlm_trainer import storage

    def kib(key):
        return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith(key))

    assert storage.exists(sys.argv[1])  # builds the client first: growth is the stream alone
    # Reset the peak-RSS mark: it starts as the parent's (inherited through fork and exec).
    open("/proc/self/clear_refs", "w").write("5")
    base = kib("VmRSS:")
    lines = total = 0
    for line in storage.iter_lines(sys.argv[1]):
        total += json.loads(line)["n"]
        lines += 1
    growth = (kib("VmHWM:") - base) / 1024
    print(json.dumps({"lines": lines, "total": total, "rss_growth_mb": growth}))
    """
)


def test_streaming_a_large_jsonl_keeps_memory_flat(root: str, tmp_path: Path) -> None:
    local = tmp_path / "big.jsonl"
    pad = "x" * 1000
    n = 48_000  # ~49 MB
    with open(local, "w") as f:
        for i in range(n):
            f.write(json.dumps({"n": i, "pad": pad}) + "\n")
    uri = storage.join(root, "data", "big.jsonl")
    storage.upload_file(local, uri)
    out = subprocess.run(
        [sys.executable, "-c", STREAM_CHILD, uri],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": PYTHONPATH},
        timeout=300,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["lines"] == n and result["total"] == n * (n - 1) // 2
    size_mb = local.stat().st_size / 2**20
    assert result["rss_growth_mb"] < 32, (result, size_mb)
    print(f"streamed {size_mb:.0f} MB, peak RSS growth {result['rss_growth_mb']:.1f} MB")


WRITER_CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from vlm_trainer import storage

    def write(folder: Path) -> None:
        for i in range(int(sys.argv[3])):
            (folder / f"shard-{i:03d}.bin").write_bytes(os.urandom(256 << 10))

    storage.write_snapshot(sys.argv[1], sys.argv[2], write, {"step": 7})
    """
)


def _uncommitted_objects(root: str, name: str) -> list[str]:
    """Files already written for `name` (its own prefix, or a local `.tmp-<name>-*` folder)."""
    fs, path = storage.resolve(root)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return []
    return [p for p in fs.find(path) if f"/{name}/" in p or f"/.tmp-{name}-" in p]


def test_snapshot_killed_mid_upload_is_never_listed(root: str) -> None:
    """SIGKILL the writer once some files are uploaded and before the manifest: the snapshot
    does not exist for readers, `clean_uncommitted` removes its remains, a rewrite commits."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER_CHILD, root, "step-000007", "80"],
        env={**os.environ, "PYTHONPATH": PYTHONPATH},
    )
    deadline = time.monotonic() + 120
    try:
        while len(_uncommitted_objects(root, "step-000007")) < 3:
            assert writer.poll() is None, "the writer finished before it could be interrupted"
            assert time.monotonic() < deadline, "the writer wrote nothing in 120s"
            time.sleep(0.01)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    left = _uncommitted_objects(root, "step-000007")
    assert 3 <= len(left) < 81 and not any(p.endswith(storage.MANIFEST) for p in left), left
    assert storage.list_snapshots(root, deep=True) == []
    assert storage.read_manifest(storage.join(root, "step-000007")) is None
    assert storage.clean_uncommitted(root)
    assert _uncommitted_objects(root, "step-000007") == []

    subprocess.run(
        [sys.executable, "-c", WRITER_CHILD, root, "step-000007", "3"],
        env={**os.environ, "PYTHONPATH": PYTHONPATH},
        check=True,
        timeout=120,
    )
    (snap,) = storage.list_snapshots(root, deep=True)
    assert snap.name == "step-000007" and len(snap.manifest["files"]) == 3


# ------------------------------------------------------------------------------------------------
# Errors name the URI and say what is wrong


def test_missing_object_and_unknown_scheme(root: str) -> None:
    missing = storage.join(root, "nope", "data.jsonl")
    with pytest.raises(storage.NotFound, match=f"{missing}: no such object"):
        next(storage.iter_lines(missing))
    with pytest.raises(storage.NotFound, match=missing):
        storage.read_bytes(missing)
    with pytest.raises(storage.NotFound, match="no such folder"):
        storage.download_dir(storage.join(root, "nope"), Path("/nonexistent-never-created"))
    assert storage.list_snapshots(storage.join(root, "nope")) == []
    with pytest.raises(storage.UnsupportedURI, match="nosuch://b/k: unsupported storage scheme"):
        storage.open_read("nosuch://b/k")


def test_missing_bucket(s3_root: str) -> None:
    uri = "s3://no-such-bucket-vlm/data.jsonl"
    with pytest.raises(storage.NotFound, match=f"{uri}: bucket does not exist"):
        storage.read_bytes(uri)
    with pytest.raises(storage.NotFound, match="bucket does not exist"):
        storage.write_bytes(uri, b"x")


def test_wrong_credentials(s3_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    storage.write_bytes(storage.join(s3_root, "a.txt"), b"a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    uri = storage.join(s3_root, "a.txt")
    with pytest.raises(storage.AccessDenied, match=f"{uri}: access denied, check the AWS_"):
        storage.read_bytes(uri)
    with pytest.raises(storage.AccessDenied, match="access denied"):
        storage.list_snapshots(s3_root)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(storage.AccessDenied, match=r"access denied.*not exist in our records"):
        storage.write_bytes(uri, b"b")
