"""Storage throughput through ``vlm_trainer.storage``: the local S3 server vs the local disk.

Measured side by side, alternating the two backends within each repeat (MB/s, medians):

- ``stream``: ``iter_lines`` over a JSONL dataset (~1 KB lines), every line JSON-parsed;
- ``snapshot_write``: ``write_snapshot`` of a folder of random files (hash + upload + manifest);
- ``snapshot_read``: ``download_snapshot`` of it into a fresh folder (download + re-hash);
- ``stream_rss``: in a child process, peak RSS while streaming a dataset ``--rss-factor`` times
  larger than ``--memory-limit-mb`` (what loading the file whole would need at least), from S3.

The S3 server is SeaweedFS (``tests.cluster.s3``, the one ``make cluster-up`` starts) on
loopback, so "S3" here measures the protocol and client stack, not a network. Usage:
``PYTHONPATH=$PWD:$PWD/trainer_image .venv/bin/python benchmarks/storage_throughput.py
[--dataset-mb 64] [--snapshot-mb 64] [--repeats 3] [--memory-limit-mb 32 --rss-factor 10]``.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vlm_trainer import storage

from tests.cluster.launcher import PYTHONPATH
from tests.cluster.s3 import start_s3

MB = 1 << 20


def write_jsonl(path: Path, size: int) -> int:
    """A JSONL of ~1 KB records totalling at least ``size`` bytes; returns the line count."""
    pad = "x" * 1000
    n = 0
    with open(path, "w") as f:
        while f.tell() < size:
            f.write(json.dumps({"n": n, "pad": pad}) + "\n")
            n += 1
    return n


def stream(uri: str) -> int:
    lines = 0
    for line in storage.iter_lines(uri):
        json.loads(line)
        lines += 1
    return lines


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def shards(payload: bytes, count: int = 8):
    """Writes ``payload`` as ``count`` files (generated once: randomness is not what is timed)."""
    step = len(payload) // count

    def write(folder: Path) -> None:
        for i in range(count):
            (folder / f"shard-{i}.bin").write_bytes(payload[i * step : (i + 1) * step])

    return write


RSS_CHILD = """
import json, sys
from vlm_trainer import storage

def kib(key):
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith(key))

assert storage.exists(sys.argv[1])  # imports and the S3 client: the baseline
# Reset the peak-RSS mark: it starts as the parent's (inherited through fork and exec).
open("/proc/self/clear_refs", "w").write("5")
base = kib("VmRSS:")
lines = 0
for line in storage.iter_lines(sys.argv[1]):
    json.loads(line)
    lines += 1
print(json.dumps({"lines": lines, "baseline_mb": base / 1024, "peak_rss_mb": kib("VmHWM:") / 1024}))
"""


def child(code: str, uri: str, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, uri],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env, "PYTHONPATH": PYTHONPATH},
    )
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset-mb", type=int, default=64)
    ap.add_argument("--snapshot-mb", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-limit-mb", type=int, default=32)
    ap.add_argument("--rss-factor", type=int, default=10)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vlm-storage-bench-"))
    server = start_s3(work / "s3")
    try:
        os.environ.update(server.env)
        roots = {"local": str(work / "local"), "s3": f"s3://{server.bucket}/bench"}
        data = work / "data.jsonl"
        write_jsonl(data, a.dataset_mb * MB)
        size = data.stat().st_size
        for root in roots.values():
            storage.upload_file(data, storage.join(root, "data.jsonl"))
        runs: dict[str, list[float]] = {}
        payload = os.urandom(a.snapshot_mb * MB)
        for r in range(a.repeats):
            for kind, root in roots.items():
                for key, value in one_repeat(root, r, size, payload, work).items():
                    runs.setdefault(f"{key}_{kind}_mb_s", []).append(value)
        result = {k: round(statistics.median(v), 1) for k, v in runs.items()}
        result["runs"] = {k: [round(x, 1) for x in v] for k, v in runs.items()}
        result.update(rss(a, work, roots["s3"], server.env))
        print(json.dumps(result, indent=2))
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)


def one_repeat(root: str, r: int, data_size: int, payload: bytes, work: Path) -> dict:
    """MB/s of streaming the dataset, writing a snapshot, reading it back (then deleted)."""
    uri = storage.join(root, "data.jsonl")
    name = f"step-{r:06d}"
    snap_uri = storage.join(root, name)
    dst = Path(tempfile.mkdtemp(dir=work))
    snap_size = len(payload)
    out = {
        "stream": data_size / MB / timed(lambda: stream(uri)),
        "snapshot_write": snap_size
        / MB
        / timed(lambda: storage.write_snapshot(root, name, shards(payload), {})),
        "snapshot_read": snap_size / MB / timed(lambda: storage.download_snapshot(snap_uri, dst)),
    }
    storage.delete_snapshot(snap_uri)
    subprocess.run(["rm", "-rf", str(dst)], check=False)
    return out


def rss(a: argparse.Namespace, work: Path, s3_root: str, env: dict[str, str]) -> dict:
    """Peak RSS of a child streaming a dataset ``rss_factor`` x the memory limit, and its RSS
    just before (imports and S3 client loaded: the baseline)."""
    big = work / "big.jsonl"
    lines = write_jsonl(big, a.memory_limit_mb * a.rss_factor * MB)
    uri = storage.join(s3_root, "big.jsonl")
    storage.upload_file(big, uri)
    big_mb = big.stat().st_size / MB
    big.unlink()
    streamed = child(RSS_CHILD, uri, env)
    base = streamed["baseline_mb"]
    assert streamed["lines"] == lines, (streamed, lines)
    return {
        "stream_rss_dataset_mb": round(big_mb, 1),
        "stream_rss_baseline_mb": round(base, 1),
        "stream_rss_peak_mb": round(streamed["peak_rss_mb"], 1),
        "stream_rss_growth_mb": round(streamed["peak_rss_mb"] - base, 1),
        "stream_rss_limit_mb": a.memory_limit_mb,
    }


if __name__ == "__main__":
    main()
