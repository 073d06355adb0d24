"""`make cluster-up` / `make cluster-down` (python -m tests.cluster up|down): a usable cluster, and
nothing left running afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.launcher import PYTHONPATH, find_binaries

pytestmark = pytest.mark.integration


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmd:
                found.append(f"{proc.name}: {cmd}")
    return found


def test_cluster_up_and_down_leave_nothing_running(tmp_path: Path) -> None:
    d = tmp_path / "dev"
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    cli = [sys.executable, "-m", "tests.cluster"]
    up = subprocess.run(
        [*cli, "up", "--dir", str(d)], capture_output=True, text=True, env=env, timeout=300
    )
    try:
        assert up.returncode == 0, up.stderr
        assert "cluster up in" in up.stdout
        assert (
            len(processes_mentioning(str(d))) >= 5
        )  # server, etcd, apiserver, cm, scheduler, runner
        kubectl = [str(find_binaries().kubectl), "--kubeconfig", str(d / "kubeconfig")]
        nodes = subprocess.run(
            [*kubectl, "get", "nodes", "-o", "name"], capture_output=True, text=True, check=True
        )
        assert nodes.stdout.split() == ["node/fake-gpu-0", "node/fake-gpu-1"]
    finally:
        down = subprocess.run(
            [*cli, "down", "--dir", str(d)], capture_output=True, text=True, env=env, timeout=120
        )
    assert down.returncode == 0, down.stderr
    assert processes_mentioning(str(d)) == []
