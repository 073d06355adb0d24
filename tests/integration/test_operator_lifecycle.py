"""Lifecycle: suspend and resume, Kueue's queue label and suspended start, TTL cleanup, and
idempotence (operator killed mid-run, manifests re-applied)."""

from __future__ import annotations

import json
import time

import pytest

from tests.cluster.local import LocalCluster
from tests.integration.operator_env import (
    SMALL,
    Operator,
    apply,
    condition,
    finished,
    get,
    trainer_job,
    wait_for,
)

pytestmark = pytest.mark.integration


def phase(cluster: LocalCluster, ns: str, name: str) -> str | None:
    return ((get(cluster, "tj", name, "-n", ns) or {}).get("status") or {}).get("phase")


def trainer_pods(cluster: LocalCluster, ns: str, name: str) -> list[dict]:
    selector = f"vlmtrain.dev/trainer-job={name},vlmtrain.dev/task=train"  # not verify/promote
    return get(cluster, "pods", "-n", ns, "-l", selector)["items"]


def test_suspend_then_resume(cluster: LocalCluster, demo_ns: str, operator: Operator) -> None:
    apply(cluster, demo_ns, trainer_job("paused", hyperparameters=SMALL, suspend=True))
    wait_for(
        "phase Suspended", lambda: phase(cluster, demo_ns, "paused") == "Suspended", timeout=30
    )
    tj = get(cluster, "tj", "paused", "-n", demo_ns)
    assert condition(tj, "Suspended")["status"] == "True"
    assert get(cluster, "job", "paused", "-n", demo_ns)["spec"]["suspend"] is True
    assert trainer_pods(cluster, demo_ns, "paused") == []
    cluster.kubectl(
        "patch", "tj", "paused", "-n", demo_ns, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    tj = finished(cluster, demo_ns, "paused")
    assert tj["status"]["phase"] == "Succeeded", tj["status"]
    assert condition(tj, "Suspended")["reason"] == "Resumed"


def test_queue_name_labels_the_job_and_starts_it_suspended(
    cluster: LocalCluster, demo_ns: str, operator: Operator
) -> None:
    apply(cluster, demo_ns, trainer_job("queued", hyperparameters=SMALL, queueName="gpu-queue"))
    job = wait_for("the Job", lambda: get(cluster, "job", "queued", "-n", demo_ns), timeout=30)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["spec"]["suspend"] is True

    def queued() -> bool:
        c = condition(get(cluster, "tj", "queued", "-n", demo_ns), "Admitted")
        return bool(c and c["reason"] == "Queued")

    wait_for("Admitted=False/Queued", queued, timeout=30)
    # Kueue admits a workload by unsuspending its Job; the operator must not undo that.
    cluster.kubectl(
        "patch", "job", "queued", "-n", demo_ns, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    tj = finished(cluster, demo_ns, "queued")
    assert tj["status"]["phase"] == "Succeeded", tj["status"]


def test_ttl_removes_the_job_and_keeps_the_status(
    cluster: LocalCluster, demo_ns: str, operator: Operator
) -> None:
    apply(
        cluster,
        demo_ns,
        trainer_job("short-lived", hyperparameters=SMALL, ttlSecondsAfterFinished=1),
    )
    tj = finished(cluster, demo_ns, "short-lived")
    assert tj["status"]["phase"] == "Succeeded"
    wait_for(
        "the TTL controller to delete the Job",
        lambda: get(cluster, "job", "short-lived", "-n", demo_ns) is None,
        timeout=60,
    )
    # Several resync periods later the operator has neither re-created the Job nor lost the status.
    time.sleep(12)
    assert get(cluster, "job", "short-lived", "-n", demo_ns) is None
    assert phase(cluster, demo_ns, "short-lived") == "Succeeded"


def test_operator_restart_mid_run_and_reapply_change_nothing(
    cluster: LocalCluster, demo_ns: str, operator: Operator
) -> None:
    hp = {"learningRate": 0.003, "epochs": 1, "batchSize": 8, "maxSteps": 12, "maxSeqLen": 256}
    manifest = trainer_job("steady", hyperparameters=hp, checkpointing={"everySteps": 4})
    apply(cluster, demo_ns, manifest)
    wait_for(
        "the trainer pod Running",
        lambda: any(
            p["status"].get("phase") == "Running" for p in trainer_pods(cluster, demo_ns, "steady")
        ),
        timeout=60,
    )
    operator.stop(kill=True)  # SIGKILL: no cleanup of any kind
    operator.start()
    tj = finished(cluster, demo_ns, "steady")
    assert tj["status"]["phase"] == "Succeeded", tj["status"]
    ns = demo_ns
    assert (
        len(
            get(
                cluster,
                "jobs",
                "-n",
                ns,
                "-l",
                "vlmtrain.dev/trainer-job=steady,vlmtrain.dev/task=train",
            )["items"]
        )
        == 1
    )
    for kind in ("configmaps", "roles", "rolebindings", "serviceaccounts"):
        names = [
            o["metadata"]["name"]
            for o in get(cluster, kind, "-n", ns, "-l", "vlmtrain.dev/trainer-job=steady")["items"]
        ]
        assert len(names) == 1, (kind, names)
    cks = [
        c["metadata"]["name"]
        for c in get(cluster, "ckpt", "-n", ns)["items"]
        if c["spec"]["trainerJob"] == "steady"
    ]
    assert sorted(cks) == [
        "steady-final",
        "steady-step-000004",
        "steady-step-000008",
    ]  # step 12 is the last: the trainer saves it once, as `final`
    assert trainer_pods(cluster, ns, "steady") and len(trainer_pods(cluster, ns, "steady")) == 1

    before = get(cluster, "tj", "steady", "-n", ns)["metadata"]
    out = cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest)).stdout
    assert "unchanged" in out
    after = get(cluster, "tj", "steady", "-n", ns)["metadata"]
    assert after["generation"] == before["generation"]
