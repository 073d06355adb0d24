"""Faults around the trainer, on the local cluster: the operator SIGKILLed in the middle of
reconciling (again and again), and the API server restarted under a running job. Neither may
cost a training step, leave a duplicate child, or end the job in anything but Succeeded."""

from __future__ import annotations

import json
import os
import random
import time

import pytest

from tests.cluster.local import LocalCluster
from tests.integration.operator_env import (
    Operator,
    apply,
    finished,
    get,
    trainer_job,
)
from tests.integration.resume_checks import resumed_steps, step_checkpoints, wait_step

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

SEED = int(os.environ.get("VLM_FAULTS_SEED", "12"))
HP = {"learningRate": 0.003, "epochs": 1, "batchSize": 8, "maxSteps": 12, "maxSeqLen": 256}
CHILDREN = ("jobs", "configmaps", "serviceaccounts", "roles", "rolebindings")


def children(cluster: LocalCluster, ns: str, name: str) -> dict[str, list[str]]:
    out = {}
    for kind in CHILDREN:
        # The trainer's children only: each checkpoint has its own verify Job, by design.
        sel = f"vlmtrain.dev/trainer-job={name},vlmtrain.dev/task=train"
        out[kind] = sorted(
            o["metadata"]["name"] for o in get(cluster, kind, "-n", ns, "-l", sel)["items"]
        )
    return out


def test_operator_killed_during_reconcile_three_times(
    cluster: LocalCluster, demo_ns: str, operator: Operator, record
) -> None:
    ns, rng = demo_ns, random.Random(SEED)
    apply(cluster, ns, trainer_job("churn", hyperparameters=HP, checkpointing={"everySteps": 4}))
    for kill in range(3):
        # Right after the apply (children half made), then while the trainer reports.
        delay = rng.uniform(0.0, 1.5) if kill == 0 else rng.uniform(0.5, 4.0)
        time.sleep(delay)
        operator.stop(kill=True)  # SIGKILL: whatever it was doing is cut off
        operator.start()
        record(fault="operator SIGKILL", after_s=round(delay, 2), steps_lost=0)
    tj = finished(cluster, ns, "churn", timeout=400)
    assert tj["status"]["phase"] == "Succeeded", tj["status"]
    assert tj["status"]["attempts"] == 1  # the trainer itself never noticed
    assert all(len(names) == 1 for names in children(cluster, ns, "churn").values()), children(
        cluster, ns, "churn"
    )
    assert step_checkpoints(cluster, ns, "churn") == ["churn-step-000004", "churn-step-000008"]


def test_api_server_restart_mid_run_costs_nothing(
    cluster: LocalCluster, demo_ns: str, operator: Operator, record
) -> None:
    if cluster.control_plane is None:
        pytest.skip("restarting the API server needs the local control plane")
    ns = demo_ns
    hp = {**HP, "maxSteps": 16}
    apply(cluster, ns, trainer_job("outage", hyperparameters=hp, checkpointing={"everySteps": 4}))
    at = wait_step(cluster, ns, "outage", 3)
    cluster.control_plane.restart("kube-apiserver", down_s=5.0)
    tj = finished(cluster, ns, "outage", timeout=400)
    assert tj["status"]["phase"] == "Succeeded", tj["status"]
    # One pod, never restarted: the trainer rode out the outage; its last report arrived.
    assert tj["status"]["attempts"] == 1 and resumed_steps(cluster, ns, "outage") == [0]
    assert tj["status"]["progress"]["step"] == 16, json.dumps(tj["status"])
    assert all(len(names) == 1 for names in children(cluster, ns, "outage").values())
    record(fault="kube-apiserver restart (5 s down)", at_step=at, steps_lost=0)
