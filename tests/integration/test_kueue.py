"""Real Kueue: a ClusterQueue with room for one GPU job, a low-priority TrainerJob running, a
high-priority one submitted. Kueue preempts the first (suspends its Job; its trainer gets
SIGTERM and snapshots at its current step), runs the second, re-admits the first when the
second finishes; the first resumes from the preemption step and ends with weights equal
(torch.equal) to an uninterrupted run."""

from __future__ import annotations

import copy
import json

import pytest

from tests.cluster.kueue import Kueue
from tests.cluster.local import LocalCluster
from tests.integration.operator_env import (
    SMALL,
    TINY_SHAPE,
    Operator,
    apply,
    condition,
    finished,
    get,
    trainer_job,
    wait_for,
)
from tests.integration.resume_checks import (
    assert_same_weights,
    final_weights,
    resumed_steps,
    step_checkpoints,
    wait_step,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KUEUE = "kueue.x-k8s.io/v1beta2"
GPU_SHAPE = "tiny-gpu1"
# 50 steps an epoch; no periodic snapshot before the end, so a resume can only start from the
# snapshot the trainer wrote when it was preempted.
LONG = {"learningRate": 0.003, "epochs": 1, "batchSize": 4, "maxSteps": 40, "maxSeqLen": 256}
ONLY_AT_THE_END = {"everySteps": 1000}


def queue_objects(ns: str) -> list[dict]:
    """Flavor, a ClusterQueue with one GPU that preempts lower priorities, a LocalQueue `gpu`,
    and the priority classes `<ns>-low` and `<ns>-high` (cluster-scoped names carry the ns)."""
    plenty = lambda r, q: {"name": r, "nominalQuota": q}  # noqa: E731
    return [
        {"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": f"{ns}-flavor"}},
        {
            "apiVersion": KUEUE,
            "kind": "ClusterQueue",
            "metadata": {"name": f"{ns}-cq"},
            "spec": {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": ns},
                },
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                        "flavors": [
                            {
                                "name": f"{ns}-flavor",
                                "resources": [
                                    plenty("cpu", "64"),
                                    plenty("memory", "256Gi"),
                                    plenty("nvidia.com/gpu", "1"),
                                ],
                            }
                        ],
                    }
                ],
            },
        },
        {
            "apiVersion": KUEUE,
            "kind": "LocalQueue",
            "metadata": {"name": "gpu", "namespace": ns},
            "spec": {"clusterQueue": f"{ns}-cq"},
        },
        *(
            {
                "apiVersion": KUEUE,
                "kind": "WorkloadPriorityClass",
                "metadata": {"name": f"{ns}-{name}"},
                "value": value,
            }
            for name, value in (("low", 10), ("high", 1000))
        ),
    ]


def test_preempted_job_snapshots_waits_and_resumes_to_the_same_weights(
    cluster: LocalCluster, demo_ns: str, operator: Operator, kueue: Kueue
) -> None:
    ns = demo_ns
    shape = copy.deepcopy(TINY_SHAPE)
    shape["metadata"]["name"] = GPU_SHAPE
    shape["spec"]["gpusPerNode"] = 1  # the pod runner's nodes advertise nvidia.com/gpu
    cluster.kubectl("apply", "-f", "-", input=json.dumps(shape))
    objs = queue_objects(ns)
    try:
        for obj in objs:
            cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))
        _run_preemption(cluster, ns, kueue)
    finally:
        for obj in reversed(objs):
            kind = f"{obj['kind'].lower()}.kueue.x-k8s.io"
            cluster.kubectl("delete", kind, obj["metadata"]["name"], "-n", ns, "--wait=false")


def _run_preemption(cluster: LocalCluster, ns: str, kueue: Kueue) -> None:
    low = trainer_job(
        "low",
        shape=GPU_SHAPE,
        hyperparameters={**LONG, "loraRank": 0, "seed": 0},
        checkpointing=ONLY_AT_THE_END,
        queueName="gpu",
        workloadPriorityClass=f"{ns}-low",
        backoffLimit=0,  # a preemption counted as a failure would fail the job
    )
    apply(cluster, ns, low)
    # The uninterrupted reference: same spec outside Kueue (no queue, so Kueue ignores it).
    ref = copy.deepcopy(low)
    ref["metadata"]["name"] = "ref"
    for key in ("queueName", "workloadPriorityClass"):
        del ref["spec"][key]
    apply(cluster, ns, ref)

    wait_step(cluster, ns, "low", 3)
    high = trainer_job(
        "high",
        shape=GPU_SHAPE,
        hyperparameters=SMALL,
        queueName="gpu",
        workloadPriorityClass=f"{ns}-high",
    )
    apply(cluster, ns, high)

    def preempted() -> dict | None:
        c = condition(get(cluster, "tj", "low", "-n", ns), "Running")
        return c if c and c["reason"] == "Preempted" and c["status"] == "False" else None

    wait_for("low preempted", preempted, timeout=120)
    assert finished(cluster, ns, "high", timeout=300)["status"]["phase"] == "Succeeded"
    tj = finished(cluster, ns, "low", timeout=400)
    assert tj["status"]["phase"] == "Succeeded", (tj["status"], kueue.tail())
    assert tj["status"]["preemptions"] == 1 and tj["status"]["attempts"] == 2, tj["status"]
    events = cluster.kubectl(
        "get", "events", "-n", ns, "--field-selector", "involvedObject.name=low"
    ).stdout
    assert "Preempted" in events, events

    # The only step snapshot is the one written on SIGTERM; the second pod resumed from it.
    snaps = step_checkpoints(cluster, ns, "low")
    assert len(snaps) == 1, snaps
    stop_step = int(snaps[0].rsplit("-", 1)[1])
    assert 3 <= stop_step < LONG["maxSteps"]
    assert resumed_steps(cluster, ns, "low") == [0, stop_step]

    assert finished(cluster, ns, "ref", timeout=300)["status"]["phase"] == "Succeeded"
    assert_same_weights(final_weights(cluster, ns, "low"), final_weights(cluster, ns, "ref"))
