"""Fixtures for tests that need the operator: CRDs installed, the operator running (one per
session), the tiny model and demo data built once, and a namespace with them on its PVC."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.kueue import Kueue, start_kueue
from tests.cluster.local import LocalCluster
from tests.integration.operator_env import (
    TINY_SHAPE,
    Operator,
    build_assets,
    install_crds,
    operator_env,
    stage_demo_claim,
)


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_assets(tmp_path_factory.mktemp("demo-assets"))


@pytest.fixture(scope="session")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    install_crds(cluster)
    op = Operator(
        cluster, tmp_path_factory.mktemp("operator") / "operator.log", operator_env(cluster)
    )
    op.start()
    cluster.kubectl("apply", "-f", "-", input=json.dumps(TINY_SHAPE))
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def demo_ns(cluster: LocalCluster, namespace: str, operator: Operator, demo_assets: Path) -> str:
    """A namespace whose `vlm-demo` PVC holds the tiny model and the demo data."""
    stage_demo_claim(cluster, namespace, demo_assets)
    return namespace


@pytest.fixture(scope="module")
def kueue(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kueue]:
    """Kueue's controller, built from its Go module, next to the local control plane; per test
    module, so the tests that play Kueue's part by hand never meet the real one."""
    if cluster.control_plane is None:
        pytest.skip("USE_EXISTING_CLUSTER: the Kueue tests start their own Kueue controller")
    k = start_kueue(cluster, tmp_path_factory.mktemp("kueue"))
    try:
        yield k
    finally:
        k.stop()
