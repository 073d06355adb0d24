"""Two nodes through the operator: an Indexed Job of 2 pods (one trainer process each, gloo),
rendezvous at `<job>-0.<job>` through the headless Service, NODE_RANK from the completion index.

On pod loss: the surviving rank's next collective fails (gloo sees the peer's socket close; the
process-group timeout bounds any wait), so its torchrun exits non-zero and its pod fails too.
The Job controller recreates the failed indexes (each failure counts against backoffLimit), the
new pods rendezvous again and resume from the newest checkpoint.
"""

from __future__ import annotations

import json

import pytest

from tests.cluster.local import LocalCluster
from tests.integration.operator_env import (
    TINY_SHAPE,
    Operator,
    apply,
    condition,
    finished,
    get,
    json_line,
    no_running_pods,
    trainer_job,
    wait_for,
)

pytestmark = pytest.mark.integration

SHAPE = "tiny-cpu-2n"
# Bounded waits for a missing peer: the trainer's process group and torchrun's rendezvous.
ENV = [
    {"name": "VLM_DIST_TIMEOUT_S", "value": "60"},
    {"name": "PET_RDZV_CONF", "value": "timeout=120"},
    {"name": "OMP_NUM_THREADS", "value": "1"},
]


@pytest.fixture(scope="module")
def two_node_shape(cluster: LocalCluster, operator: Operator):
    shape = json.loads(json.dumps(TINY_SHAPE))
    shape["metadata"]["name"] = SHAPE
    shape["spec"]["nodes"] = 2
    # Reserved names (VLM_*, PET_*): the admin's shape sets them, a job cannot.
    shape["spec"]["podPolicy"] = {"env": ENV}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(shape))
    yield SHAPE
    cluster.kubectl("delete", "ts", SHAPE, "--wait=false")


def trainer_logs(cluster: LocalCluster, ns: str, job: str) -> list:
    pods = (cluster.workdir / "runner" / "pods").glob(f"{ns}_{job}-*/containers/trainer/log")
    return sorted(pods, key=lambda p: p.stat().st_mtime)


def events(log) -> list[dict]:
    return [e for e in map(json_line, log.read_text().splitlines()) if e]


def test_two_node_job_rendezvouses_trains_and_succeeds(
    cluster: LocalCluster, demo_ns: str, two_node_shape: str
) -> None:
    hp = {"learningRate": 0.003, "epochs": 1, "batchSize": 8, "maxSteps": 6, "maxSeqLen": 256}
    spec = {"hyperparameters": hp, "checkpointing": {"everySteps": 3}, "backoffLimit": 2}
    apply(cluster, demo_ns, trainer_job("duo", shape=SHAPE, **spec))
    job = wait_for("the Indexed Job", lambda: get(cluster, "job", "duo", "-n", demo_ns), 30)
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
    tj = finished(cluster, demo_ns, "duo", timeout=300)
    assert tj["status"]["phase"] == "Succeeded", (tj["status"], _tails(cluster, demo_ns, "duo"))
    assert tj["status"]["attempts"] == 2  # two pods, no retry
    logs = trainer_logs(cluster, demo_ns, "duo")
    assert len(logs) == 2
    # Rank 0 (pod index 0) reports; both ranks trained every step together.
    steps = [e["step"] for e in events(logs[0]) + events(logs[1]) if e.get("event") == "train"]
    assert sorted(steps) == list(range(1, 7))
    ckpts = {c["metadata"]["name"] for c in get(cluster, "ckpt", "-n", demo_ns)["items"]}
    assert {"duo-step-000003", "duo-final"} <= ckpts
    wait_for("no running pods", lambda: no_running_pods(cluster, demo_ns), timeout=30)


@pytest.mark.slow
def test_killing_one_pod_retries_and_resumes(
    cluster: LocalCluster, demo_ns: str, two_node_shape: str
) -> None:
    hp = {"learningRate": 0.003, "epochs": 2, "batchSize": 8, "maxSeqLen": 256}
    spec = {"hyperparameters": hp, "checkpointing": {"everySteps": 5}, "backoffLimit": 6}
    apply(cluster, demo_ns, trainer_job("duo-kill", shape=SHAPE, **spec))

    def first_checkpoint() -> str | None:
        tj = get(cluster, "tj", "duo-kill", "-n", demo_ns) or {}
        return tj.get("status", {}).get("latestCheckpoint")

    wait_for("the first checkpoint", first_checkpoint, timeout=240)
    selector = "batch.kubernetes.io/job-name=duo-kill"  # not the checkpoint-verify pods
    pods = get(cluster, "pods", "-n", demo_ns, "-l", selector)["items"]
    running = sorted(p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running")
    assert len(running) == 2, "the trainer finished before it could be interrupted"
    victim = next(p for p in pods if p["metadata"]["name"] == running[0])
    index = victim["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
    cluster.kubectl("delete", "pod", running[0], "-n", demo_ns, "--wait=false")

    def restarting() -> bool:
        # The deleted pod gets SIGTERM, snapshots and exits 75: a disruption (Preempted); its
        # peer loses the rendezvous and fails: a retry (Retrying). Either may be seen first.
        c = condition(get(cluster, "tj", "duo-kill", "-n", demo_ns), "Running")
        return bool(c and c["reason"] in ("Retrying", "Preempted"))

    wait_for("Running/Retrying or Preempted", restarting, timeout=180)
    tj = finished(cluster, demo_ns, "duo-kill", timeout=600)
    assert tj["status"]["phase"] == "Succeeded", (
        tj["status"],
        _tails(cluster, demo_ns, "duo-kill"),
    )
    assert tj["status"]["attempts"] >= 4, tj["status"]  # 2 pods, then at least 2 more
    # The rank-0 pod that finished the job resumed from a checkpoint.
    starts = [
        e
        for log in trainer_logs(cluster, demo_ns, "duo-kill")
        for e in events(log)
        if e.get("event") == "start"
    ]
    assert starts[-1].get("resumed_step", 0) >= 5, (index, starts)
    print(f"killed index {index}; attempts {tj['status']['attempts']}; resumed at", starts[-1])
    wait_for("no running pods", lambda: no_running_pods(cluster, demo_ns), timeout=60)


def _tails(cluster: LocalCluster, ns: str, job: str) -> str:
    return "\n---\n".join(p.read_text()[-3000:] for p in trainer_logs(cluster, ns, job))
