"""`make cluster-up` / `make cluster-down` (python -m tests.cluster up|down): a usable cluster with
its S3 server, and nothing left running afterwards."""

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
        running = processes_mentioning(str(d))
        assert len(running) >= 6, running  # server, etcd, apiserver, cm, scheduler, runner, weed
        assert any(" server " in p and "-s3.config=" in p for p in running), running
        kubectl = [str(find_binaries().kubectl), "--kubeconfig", str(d / "kubeconfig")]
        nodes = subprocess.run(
            [*kubectl, "get", "nodes", "-o", "name"], capture_output=True, text=True, check=True
        )
        assert nodes.stdout.split() == ["node/fake-gpu-0", "node/fake-gpu-1"]
        assert_s3_env_works(d / "s3.env")
    finally:
        down = subprocess.run(
            [*cli, "down", "--dir", str(d)], capture_output=True, text=True, env=env, timeout=120
        )
    assert down.returncode == 0, down.stderr
    assert processes_mentioning(str(d)) == []


def assert_s3_env_works(path: Path) -> None:
    """`s3.env` has exactly the documented lines, and they reach a working bucket."""
    env = dict(line.split("=", 1) for line in path.read_text().splitlines())
    assert sorted(env) == sorted(
        [
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "VLM_S3_BUCKET",
        ]
    )
    assert env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    probe = (
        "import os; from vlm_trainer import storage\n"
        "u = f's3://{os.environ[\"VLM_S3_BUCKET\"]}/probe'\n"
        "storage.write_bytes(u, b'hi'); print(storage.read_bytes(u).decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "PYTHONPATH": PYTHONPATH},
        timeout=120,
    )
    assert out.stdout.strip() == "hi", out.stderr
