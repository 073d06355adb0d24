"""`python -m tests.cluster up|down|status [--dir .devcluster]`: the local cluster for people.

`up` starts a background server process (control plane + pod runner) that owns every child and
returns once the API server, the fake nodes and the S3 server are ready; the kubeconfig is
`<dir>/kubeconfig`, the S3 endpoint and credentials are in `<dir>/s3.env`.
`down` stops it (SIGTERM, then SIGKILL) and waits until nothing is left. Each `up` starts from an
empty cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.cluster.launcher import PYTHONPATH, REPO

DEFAULT_DIR = REPO / ".devcluster"


def _pid(d: Path) -> int | None:
    try:
        pid = int((d / "server.pid").read_text())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None


def serve(d: Path) -> None:
    from tests.cluster.local import LocalCluster

    c = LocalCluster.start(d, s3=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    (d / "ready").write_text(c.control_plane.server if c.control_plane else "")
    stop.wait()
    c.stop()


def up(d: Path, timeout: float) -> int:
    if _pid(d):
        print(f"already running; KUBECONFIG={d / 'kubeconfig'}")
        return 0
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    t0 = time.monotonic()
    with open(d / "server.log", "ab") as log:
        p = subprocess.Popen(
            [sys.executable, "-m", "tests.cluster", "serve", "--dir", str(d)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": PYTHONPATH},
            start_new_session=True,
        )
    (d / "server.pid").write_text(str(p.pid))
    while not (d / "ready").exists():
        if p.poll() is not None or time.monotonic() - t0 > timeout:
            print((d / "server.log").read_text()[-4000:], file=sys.stderr)
            down(d)
            print("cluster-up failed", file=sys.stderr)
            return 1
        time.sleep(0.2)
    print(f"cluster up in {time.monotonic() - t0:.1f}s: {(d / 'ready').read_text()}")
    print(f"export KUBECONFIG={d / 'kubeconfig'}")
    if (d / "s3.env").exists():
        print(f"S3 (SeaweedFS): set -a; . {d / 's3.env'}; set +a")
    return 0


def down(d: Path) -> int:
    pid = _pid(d)
    if pid is None:
        print("no cluster running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while _pid(d) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # the server's session: anything it left behind
    (d / "server.pid").unlink(missing_ok=True)
    (d / "ready").unlink(missing_ok=True)
    print("cluster down")
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m tests.cluster", description=__doc__.splitlines()[0]
    )
    ap.add_argument("command", choices=["up", "down", "status", "serve"])
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument(
        "--timeout", type=float, default=1800, help="seconds `up` waits (first build included)"
    )
    a = ap.parse_args()
    d = a.dir.resolve()
    if a.command == "serve":
        serve(d)
    elif a.command == "up":
        sys.exit(up(d, a.timeout))
    elif a.command == "down":
        sys.exit(down(d))
    else:
        print(f"running, KUBECONFIG={d / 'kubeconfig'}" if _pid(d) else "not running")


if __name__ == "__main__":
    main()
