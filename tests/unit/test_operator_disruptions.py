"""Disruptions are not failures: the Job's podFailurePolicy and grace period, and the TrainerJob
status through a Kueue preemption, an eviction and a full checkpoint volume."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError
from vlm_operator.api import TrainerJob
from vlm_operator.builders.job import (
    EXIT_CONFIG_INVALID,
    EXIT_DATA_INVALID,
    EXIT_PREEMPTED,
    EXIT_STORAGE_FULL,
    trainer_workload,
)
from vlm_operator.reconcile.job_status import derive_status

from tests.unit.test_operator_builders import TJ, cond_of, job, pod, shape, tj

pytestmark = pytest.mark.unit


def train_job(t: dict[str, Any], **shape_spec: Any) -> dict[str, Any]:
    objs = trainer_workload(t, shape(**shape_spec), "pvc://x", "img")
    return next(o for o in objs if o["kind"] == "Job")


def test_pod_failure_policy_fails_fast_and_ignores_disruptions() -> None:
    rules = train_job(tj())["spec"]["podFailurePolicy"]["rules"]
    assert [r["action"] for r in rules] == ["FailJob", "Ignore", "Ignore"]
    assert rules[0]["onExitCodes"]["values"] == sorted(  # the apiserver wants them sorted
        [EXIT_DATA_INVALID, EXIT_CONFIG_INVALID, EXIT_STORAGE_FULL]
    )
    assert rules[1]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    assert rules[2]["onExitCodes"]["values"] == [EXIT_PREEMPTED]
    assert all(r["onExitCodes"]["containerName"] == "trainer" for r in rules if "onExitCodes" in r)
    # Ignore needs restartPolicy Never (the apiserver refuses podFailurePolicy otherwise).
    assert train_job(tj())["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_grace_period_comes_from_the_shape() -> None:
    pod_spec = train_job(tj())["spec"]["template"]["spec"]
    assert pod_spec["terminationGracePeriodSeconds"] == 300
    pod_spec = train_job(tj(), terminationGracePeriodSeconds=900)["spec"]["template"]["spec"]
    assert pod_spec["terminationGracePeriodSeconds"] == 900


def test_workload_priority_class_labels_the_job_and_needs_a_queue() -> None:
    j = train_job(tj(queueName="gpu", workloadPriorityClass="high"))
    assert j["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "high"
    assert "kueue.x-k8s.io/priority-class" not in train_job(tj())["metadata"]["labels"]
    bad = copy.deepcopy(TJ)
    bad["spec"]["workloadPriorityClass"] = "high"
    with pytest.raises(ValidationError, match="needs queueName"):
        TrainerJob.model_validate(bad)


def suspended_at(t: str) -> dict[str, Any]:
    cond = {"type": "Suspended", "status": "True", "lastTransitionTime": t}
    return job([cond], suspend=True)


def test_kueue_preemption_is_counted_once_and_resumes_as_preempted() -> None:
    t = tj(queueName="gpu")
    t["status"] = derive_status(
        t, job(active=1, startTime="2026-01-01T00:00:00Z"), [pod("Running")]
    )
    assert t["status"]["attempts"] == 1 and "preemptions" not in t["status"]
    # Kueue suspends the Job: its pod is deleted (a stopped trainer is not a failure).
    s = derive_status(t, suspended_at("2026-01-01T00:05:00Z"), [])
    assert s["phase"] == "Pending" and s["preemptions"] == 1 and s["attempts"] == 1
    assert s["lastPreemptionTime"] == "2026-01-01T00:05:00Z"
    assert cond_of(s, "Running")["reason"] == "Preempted"
    t["status"] = s
    assert derive_status(t, suspended_at("2026-01-01T00:05:00Z"), []) == s  # counted once
    # Re-admitted: a new pod runs; the restart says why.
    t["status"] = s = derive_status(t, job(active=1), [pod("Running")])
    assert s["phase"] == "Running" and s["attempts"] == 2 and s["preemptions"] == 1
    assert cond_of(s, "Running")["reason"] == "Preempted"
    # A second preemption, later, counts again.
    s = derive_status(t, suspended_at("2026-01-01T00:09:00Z"), [])
    assert s["preemptions"] == 2 and s["attempts"] == 2


def test_a_suspension_before_the_first_start_is_no_preemption() -> None:
    s = derive_status(tj(queueName="gpu"), suspended_at("2026-01-01T00:00:00Z"), [])
    assert "preemptions" not in s and cond_of(s, "Running")["reason"] == "Queued"


def disrupted_pod(finished: str) -> dict[str, Any]:
    p = pod("Failed", 143, "", finished)
    p["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True"}]
    return p


@pytest.mark.parametrize(
    "gone",
    [
        disrupted_pod("2026-01-01T00:03:00Z"),
        pod("Failed", EXIT_PREEMPTED, "", "2026-01-01T00:03:00Z"),
    ],
)
def test_an_evicted_or_gracefully_stopped_pod_is_a_preemption(gone: dict[str, Any]) -> None:
    # The Job controller ignored it (failed stays 0) and started a replacement.
    s = derive_status(tj(), job(active=1), [gone, pod("Running")])
    assert s["preemptions"] == 1 and s["attempts"] == 2
    running = cond_of(s, "Running")
    assert running["status"] == "True" and running["reason"] == "Preempted"


def test_a_real_failure_after_a_preemption_is_retrying() -> None:
    pods = [
        pod("Failed", EXIT_PREEMPTED, "", "2026-01-01T00:03:00Z"),
        pod("Failed", 1, "Traceback: boom", "2026-01-01T00:07:00Z"),
        pod("Running"),
    ]
    s = derive_status(tj(), job(active=1, failed=1), pods)
    assert s["attempts"] == 3 and cond_of(s, "Running")["reason"] == "Retrying"
    assert "boom" in cond_of(s, "Running")["message"]


def test_storage_full_fails_with_its_own_reason() -> None:
    failed = job([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}], failed=1)
    msg = "disk full writing snapshot step-000040: needs 812 MB, 120 MB free"
    s = derive_status(tj(), failed, [pod("Failed", EXIT_STORAGE_FULL, msg)])
    f = cond_of(s, "Failed")
    assert s["phase"] == "Failed" and f["reason"] == "StorageFull" and "812 MB" in f["message"]


def created(p: dict[str, Any], at: str) -> dict[str, Any]:
    p["metadata"]["creationTimestamp"] = at
    return p


def test_a_pod_deleted_and_replaced_unseen_counts_as_an_attempt_and_a_preemption() -> None:
    t = tj()
    first = created(pod("Running", finished="a"), "2026-01-01T00:00:00Z")
    # The Job's counts lag the pod: no preemption is made up while they settle.
    assert "preemptions" not in derive_status(t, job(active=0), [first])
    t["status"] = s = derive_status(t, job(active=1), [first])
    assert s["attempts"] == 1 and s["lastAttemptTime"] == "2026-01-01T00:00:00Z"
    # `kubectl delete pod`: SIGTERM, exit 75 (ignored), gone before the operator looked.
    second = created(pod("Running", finished="b"), "2026-01-01T00:02:00Z")
    t["status"] = s = derive_status(t, job(active=1), [second])
    assert s["attempts"] == 2 and s["preemptions"] == 1, s
    assert cond_of(s, "Running")["reason"] == "Preempted"
    assert derive_status(t, job(active=1), [second]) == s  # counted once
