"""Two operator replicas with leader election: only the Lease holder writes to the API server
(counted on each replica's /metrics, `vlm_operator_api_writes_total`); SIGKILL it and the other
takes over within the Lease duration, and the TrainerJob still succeeds.

The replicas watch `ha-*` namespaces only, so the session's shared operator (`t-*`) never
touches this test's objects.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.local import LocalCluster
from tests.integration.operator_env import (
    SMALL,
    TINY_SHAPE,
    Operator,
    apply,
    finished,
    get,
    install_crds,
    operator_env,
    stage_demo_claim,
    trainer_job,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LEASE_SECONDS = 6
_WRITE = re.compile(r'^vlm_operator_api_writes_total\{kind="([^"]+)",verb="([^"]+)"\} (\S+)$', re.M)


def writes(op: Operator) -> float:
    """API writes this replica made, Lease renewals aside."""
    return sum(float(n) for kind, _, n in _WRITE.findall(op.metrics()) if kind != "Lease")


def leading(op: Operator) -> bool:
    return bool(re.search(r"^vlm_operator_leader 1\.0$", op.metrics(), re.M))


@pytest.fixture
def ha_ns(cluster: LocalCluster, demo_assets: Path) -> Iterator[str]:
    name = f"ha-{secrets.token_hex(4)}"
    cluster.kubectl("create", "namespace", name)
    wait_for(
        "the default ServiceAccount",
        lambda: get(cluster, "serviceaccount", "default", "-n", name),
        timeout=30,
    )
    stage_demo_claim(cluster, name, demo_assets)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def replicas(
    cluster: LocalCluster, ha_ns: str, tmp_path: Path
) -> Iterator[tuple[Operator, Operator]]:
    install_crds(cluster)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(TINY_SHAPE))
    args = (
        "--namespace",
        "ha-*",
        "--leader-elect",
        "--lease-namespace",
        ha_ns,
        "--lease-seconds",
        str(LEASE_SECONDS),
    )
    ops = tuple(
        Operator(cluster, tmp_path / f"op-{i}.log", operator_env(cluster), args=args)
        for i in range(2)
    )
    try:
        ops[0].start()
        wait_for("replica 0 to lead", lambda: leading(ops[0]), timeout=30)
        ops[1].start()
        yield ops  # type: ignore[misc]
    finally:
        for op in ops:
            op.stop(kill=True)


def test_one_replica_writes_and_the_other_takes_over(
    cluster: LocalCluster, ha_ns: str, replicas: tuple[Operator, Operator]
) -> None:
    first, standby = replicas
    apply(
        cluster,
        ha_ns,
        trainer_job("ha", hyperparameters={"learningRate": 0.003, "epochs": 1, "batchSize": 8}),
    )
    wait_for("the trainer Job", lambda: get(cluster, "job", "ha", "-n", ha_ns), timeout=60)
    time.sleep(3)  # both replicas have seen the events by now
    assert writes(first) > 0
    assert writes(standby) == 0, standby.metrics()
    assert not leading(standby)
    lease = get(cluster, "lease", "vlm-trainer-operator", "-n", ha_ns)
    assert lease["spec"]["holderIdentity"].endswith(f"_{first.proc.pid}")

    first.stop(kill=True)
    t0 = time.monotonic()
    wait_for("the standby to lead", lambda: leading(standby), timeout=LEASE_SECONDS + 20)
    handover = time.monotonic() - t0
    print(f"handover after SIGKILL: {handover:.1f}s (lease {LEASE_SECONDS}s)")
    assert handover <= LEASE_SECONDS + 2 + 3  # lease + one retry period + polling slack
    # The job started under the old leader, and one only the new leader can have handled.
    apply(cluster, ha_ns, trainer_job("ha-after", hyperparameters=SMALL))
    for name in ("ha", "ha-after"):
        tj = finished(cluster, ha_ns, name, timeout=300)
        assert tj["status"]["phase"] == "Succeeded", (name, tj["status"])
    assert writes(standby) > 0
    lease = get(cluster, "lease", "vlm-trainer-operator", "-n", ha_ns)
    assert lease["spec"]["holderIdentity"].endswith(f"_{standby.proc.pid}")
    assert lease["spec"]["leaseTransitions"] >= 1
