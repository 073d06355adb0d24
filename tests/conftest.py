"""Shared pytest fixtures: one local control plane (with the pod runner) per test session, and
one real S3 server (SeaweedFS) per session for the tests that need object storage.

Both start lazily, only when a test asks for `cluster` or `s3_server`/`s3_root`, so
`pytest -m unit` never builds or starts either. `USE_EXISTING_CLUSTER=true` uses the cluster in
`$KUBECONFIG` instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.local import LocalCluster
from tests.cluster.s3 import S3Server, start_s3


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    if os.environ.get("USE_EXISTING_CLUSTER", "").lower() == "true":
        yield LocalCluster.existing()
        return
    workdir = Path(tempfile.mkdtemp(prefix="vlm-cluster-"))
    c = LocalCluster.start(workdir)
    try:
        yield c
    finally:
        c.stop()
        if os.environ.get("KEEP_CLUSTER_DIR") != "1":
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace for one test (`t-*`: the test operator watches these), deleted (without
    waiting) afterwards."""
    yield from fresh_namespace(cluster, "t-")


@pytest.fixture
def quiet_namespace(cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace that no operator watches: for tests that write status by hand while
    the session's operator (started by an earlier module) may be running."""
    yield from fresh_namespace(cluster, "q-")


def fresh_namespace(cluster: LocalCluster, prefix: str) -> Iterator[str]:
    name = f"{prefix}{secrets.token_hex(4)}"
    cluster.kubectl("create", "namespace", name)
    # Pods are refused until the ServiceAccount controller has made `default`.
    deadline = time.monotonic() + 30
    while cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode:
        assert time.monotonic() < deadline, f"no default ServiceAccount in {name} after 30s"
        time.sleep(0.2)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """SeaweedFS's S3 gateway alone (no control plane), as `make cluster-up` starts it."""
    workdir = Path(tempfile.mkdtemp(prefix="vlm-s3-"))
    server = start_s3(workdir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def s3_root(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh `s3://` prefix for one test, with the server's AWS_* variables in the environment
    (of this process and of any subprocess it starts)."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return f"s3://{s3_server.bucket}/t-{secrets.token_hex(4)}"
