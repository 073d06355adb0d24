"""spec.suspend mid-run goes through the graceful stop: the Job is suspended, its pod gets
SIGTERM, the trainer writes a snapshot at the step it reached and exits 75, which the Job's
podFailurePolicy ignores; resuming continues from that step (not from the last periodic
snapshot), and the stop is counted as a preemption, not a failure."""

from __future__ import annotations

import json

import pytest

from tests.cluster.local import LocalCluster
from tests.integration.operator_env import (
    Operator,
    apply,
    condition,
    finished,
    get,
    no_running_pods,
    trainer_job,
    wait_for,
)
from tests.integration.resume_checks import (
    resumed_steps,
    step_checkpoints,
    trainer_logs,
    wait_step,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HP = {"learningRate": 0.003, "epochs": 1, "batchSize": 4, "maxSteps": 40, "maxSeqLen": 256}


def _suspend(cluster: LocalCluster, ns: str, name: str, value: bool) -> None:
    patch = json.dumps({"spec": {"suspend": value}})
    cluster.kubectl("patch", "tj", name, "-n", ns, "--type=merge", "-p", patch)


def test_suspend_mid_run_resumes_from_the_stop_step(
    cluster: LocalCluster, demo_ns: str, operator: Operator
) -> None:
    ns = demo_ns
    spec = {
        "hyperparameters": {**HP, "loraRank": 0, "seed": 0},
        # One periodic snapshot (step 5) before the stop: resuming from it would be wrong.
        "checkpointing": {"everySteps": 5},
        "backoffLimit": 0,  # a stop counted as a failure would fail the job
    }
    apply(cluster, ns, trainer_job("pausable", **spec))
    wait_step(cluster, ns, "pausable", 7)
    _suspend(cluster, ns, "pausable", True)
    wait_for("the trainer pod gone", lambda: no_running_pods(cluster, ns), timeout=120)
    wait_for(
        "phase Suspended",
        lambda: (
            (get(cluster, "tj", "pausable", "-n", ns) or {}).get("status", {}).get("phase")
            == "Suspended"
        ),
        timeout=30,
    )
    (log,) = trainer_logs(cluster, ns, "pausable")  # one pod so far
    snaps = step_checkpoints(cluster, ns, "pausable")
    stop_step = max(int(s.rsplit("-", 1)[1]) for s in snaps)
    assert stop_step > 5, (snaps, log.read_text()[-2000:])
    assert stop_step % 5, f"stopped exactly on a periodic step {stop_step}: not a stop snapshot"

    _suspend(cluster, ns, "pausable", False)
    tj = finished(cluster, ns, "pausable", timeout=400)
    assert tj["status"]["phase"] == "Succeeded", tj["status"]
    assert resumed_steps(cluster, ns, "pausable") == [0, stop_step]
    assert tj["status"]["preemptions"] == 1 and tj["status"]["attempts"] == 2, tj["status"]
    assert condition(tj, "Suspended")["reason"] == "Resumed"
