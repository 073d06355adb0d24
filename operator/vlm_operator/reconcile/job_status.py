"""TrainerJob status from what the cluster shows: a pure function of the batch Job and its pods.

Phases: Pending (admitted, pods not running yet, or waiting for a shape), Running, Suspended,
Succeeded, Failed. Conditions: Admitted, Running, Succeeded, Failed, Suspended, each with a reason
from `api.conditions.Reason`. Failure reasons: `DataInvalid` (trainer exit code 65),
`InvalidSpec` (exit code 78, the trainer refused its config), `DeadlineExceeded`,
`BackoffLimitExceeded`, `StorageFull` (exit code 74), otherwise `TrainerFailed`; the message
carries the exit code and the container's termination message, so `kubectl describe tj` says what
went wrong.

Preemptions are not failures: the trainer stopped by a disruption (Kueue suspending its Job,
spec.suspend, an eviction that marks the pod `DisruptionTarget`, a graceful stop with exit code
75) is counted in `status.preemptions` and `attempts`, and Running says `Preempted`. Each
preemption is one instant (the Job's `Suspended` transition, or the disrupted pod's end);
`status.lastPreemptionTime` is the newest one counted, so a repeated reconcile counts nothing
twice. `attempts` counts trainer pods by creation (`status.lastAttemptTime` marks the newest
counted), because a podFailurePolicy-ignored pod is in none of the Job's counters.
"""

from __future__ import annotations

from typing import Any

from vlm_operator.api import ConditionType as C
from vlm_operator.api import JobPhase, Reason, new_condition, set_condition
from vlm_operator.builders.job import (
    CONTAINER,
    EXIT_CONFIG_INVALID,
    EXIT_DATA_INVALID,
    EXIT_PREEMPTED,
    EXIT_STORAGE_FULL,
)

MAX_MESSAGE = 2000


def job_condition(job: dict[str, Any], type: str) -> dict[str, Any] | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type and c.get("status") == "True":
            return c
    return None


def _terminated(pod: dict[str, Any], container: str) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == container and "terminated" in (cs.get("state") or {}):
            return cs["state"]["terminated"]
    return None


def _disruption_target(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "DisruptionTarget" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def disrupted(pod: dict[str, Any], container: str = CONTAINER) -> bool:
    """A pod that ended because it was stopped from outside, not because the trainer failed."""
    if (pod.get("status") or {}).get("phase") != "Failed":
        return False
    if _disruption_target(pod):
        return True
    term = _terminated(pod, container)
    return bool(term and term.get("exitCode") == EXIT_PREEMPTED)


def _ended_at(pod: dict[str, Any]) -> str:
    """When a disrupted pod ended: its trainer's finish, else when it was marked (an evicted
    pod may never have started its container)."""
    if finished := (_terminated(pod, CONTAINER) or {}).get("finishedAt"):
        return finished
    marks = [
        c.get("lastTransitionTime") or ""
        for c in (pod.get("status") or {}).get("conditions") or []
        if c.get("type") == "DisruptionTarget"
    ]
    return max(marks, default="")


def preemptions(
    tj: dict[str, Any], job: dict[str, Any], pods: list[dict[str, Any]]
) -> tuple[int, str | None]:
    """(status.preemptions, status.lastPreemptionTime) after counting every preemption newer
    than the last one counted: a suspension of a Job that had started, and each disrupted pod,
    except pods the Job controller deleted for a suspension (that suspension is their count;
    an evicted pod carries DisruptionTarget)."""
    old = tj.get("status") or {}
    count, last = old.get("preemptions") or 0, old.get("lastPreemptionTime")
    times = [
        _ended_at(p)
        for p in pods
        if disrupted(p) and (_disruption_target(p) or not p["metadata"].get("deletionTimestamp"))
    ]
    suspended = job_condition(job, "Suspended")
    if suspended and old.get("startTime"):
        times.append(suspended.get("lastTransitionTime") or "")
    new = [t for t in times if t and (last is None or t > last)]
    return count + len(new), max([last or "", *new]) or None


def last_failure(pods: list[dict[str, Any]], container: str = CONTAINER) -> tuple[int | None, str]:
    """Exit code and termination message of the most recently finished failed pod."""
    failed = [
        (p, t)
        for p in pods
        if (t := _terminated(p, container)) and t.get("exitCode", 0) != 0 and not disrupted(p)
    ]
    if not failed:
        return None, ""
    _, term = max(failed, key=lambda pt: pt[1].get("finishedAt") or "")
    return term.get("exitCode"), (term.get("message") or term.get("reason") or "").strip()


def new_pods(tj: dict[str, Any], pods: list[dict[str, Any]]) -> tuple[int, str | None]:
    """Trainer pods created after the newest one already counted in `attempts` (marked by
    status.lastAttemptTime), and the new mark: a pod deleted before anyone saw it end still
    counts, since each pod is seen at least once while it exists."""
    last = (tj.get("status") or {}).get("lastAttemptTime")
    times = [(p.get("metadata") or {}).get("creationTimestamp") or "" for p in pods]
    new = [t for t in times if t and (last is None or t > last)]
    return len(new), max([last or "", *new]) or None


def _last_failure_time(pods: list[dict[str, Any]]) -> str:
    return max(
        (
            t.get("finishedAt") or ""
            for p in pods
            if (t := _terminated(p, CONTAINER)) and t.get("exitCode", 0) != 0 and not disrupted(p)
        ),
        default="",
    )


def failure_reason(job_reason: str | None, exit_code: int | None) -> str:
    if exit_code == EXIT_DATA_INVALID:
        return Reason.DATA_INVALID
    if exit_code == EXIT_CONFIG_INVALID:
        return Reason.INVALID_SPEC
    if exit_code == EXIT_STORAGE_FULL:
        return Reason.STORAGE_FULL
    if job_reason == "DeadlineExceeded":
        return Reason.DEADLINE_EXCEEDED
    if job_reason == "BackoffLimitExceeded":
        return Reason.BACKOFF_LIMIT_EXCEEDED
    return Reason.TRAINER_FAILED


def _failure_message(exit_code: int | None, message: str, job_message: str) -> str:
    parts = []
    if exit_code is not None:
        parts.append(f"trainer exited with code {exit_code}")
    if message:
        parts.append(message)
    elif job_message:
        parts.append(job_message)
    text = ": ".join(parts) or "the trainer failed"
    # The end of a long message (a traceback's last line) says the most: keep the tail.
    if len(text) <= MAX_MESSAGE:
        return text
    head = f"trainer exited with code {exit_code}: " if exit_code is not None else ""
    return f"{head}...{text[-(MAX_MESSAGE - 80) :]}"


def pending_message(pods: list[dict[str, Any]]) -> str:
    """Why pods are not running yet: the scheduler's or the kubelet's word."""
    for p in pods:
        pod, st = p["metadata"]["name"], p.get("status") or {}
        for c in st.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                return f"pod {pod}: {c.get('message') or c.get('reason')}"
        for cs in st.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting")
            if waiting and waiting.get("reason") not in (None, "ContainerCreating"):
                return f"pod {pod}: {waiting['reason']}: {waiting.get('message', '')}"
    return "waiting for trainer pods to start"


def derive_status(
    tj: dict[str, Any], job: dict[str, Any], pods: list[dict[str, Any]]
) -> dict[str, Any]:
    """The status fields the operator owns (not progress/latestCheckpoint, which the trainer
    writes), given the current TrainerJob, its batch Job and that Job's pods."""
    gen = tj["metadata"].get("generation")
    old = tj.get("status") or {}
    conds = old.get("conditions") or []
    js = job.get("status") or {}

    def cond(type: str, status: bool, reason: str, message: str = "") -> None:
        nonlocal conds
        conds = set_condition(
            conds, new_condition(type, status, reason, message, observed_generation=gen)
        )

    active, failed, succeeded = js.get("active", 0), js.get("failed", 0), js.get("succeeded", 0)
    preempted, last_preempted = preemptions(tj, job, pods)
    fresh, last_attempt = new_pods(tj, pods)
    attempts = max((old.get("attempts") or 0) + fresh, active + failed + succeeded + preempted)
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    if running and active and job.get("spec", {}).get("parallelism", 1) == 1:
        # Once the replacement runs, the Job's counts have settled: a restart that no counted
        # failure explains was a stop from outside (ignored by the podFailurePolicy, or a pod
        # deleted), even when nobody saw the old pod end.
        preempted = max(preempted, attempts - 1 - failed)
    out: dict[str, Any] = {"observedGeneration": gen, "attempts": attempts}
    if last_attempt:
        out["lastAttemptTime"] = last_attempt
    if preempted:
        out["preemptions"] = preempted
    if last_preempted:
        out["lastPreemptionTime"] = last_preempted
    if start := old.get("startTime") or js.get("startTime"):
        out["startTime"] = start  # the first start; a suspended Job clears its own
    cond(C.ADMITTED, True, Reason.SHAPE_RESOLVED, f"shape version {old.get('shapeVersion', '?')}")
    queued = bool(tj["spec"].get("queueName")) and not tj["spec"].get("suspend")

    if done := job_condition(job, "Complete"):
        out["phase"] = JobPhase.SUCCEEDED
        out["completionTime"] = js.get("completionTime") or done.get("lastTransitionTime")
        cond(C.SUCCEEDED, True, Reason.COMPLETED, "training finished; final checkpoint written")
        cond(C.RUNNING, False, Reason.COMPLETED)
        cond(C.FAILED, False, Reason.COMPLETED)
    elif fail := job_condition(job, "Failed"):
        code, message = last_failure(pods)
        reason = failure_reason(fail.get("reason"), code)
        out["phase"] = JobPhase.FAILED
        out["completionTime"] = fail.get("lastTransitionTime")
        cond(C.FAILED, True, reason, _failure_message(code, message, fail.get("message", "")))
        cond(C.RUNNING, False, reason)
        cond(C.SUCCEEDED, False, reason)
    elif job.get("spec", {}).get("suspend"):
        out["phase"] = JobPhase.SUSPENDED if not queued else JobPhase.PENDING
        if queued:
            cond(
                C.ADMITTED,
                False,
                Reason.QUEUED,
                f"waiting in Kueue queue {tj['spec']['queueName']}",
            )
            cond(C.SUSPENDED, False, Reason.QUEUED)
        else:
            cond(C.SUSPENDED, True, Reason.SUSPENDED, "spec.suspend is true; pods stopped")
        if queued and old.get("startTime"):
            # Kueue took back the quota it had given: the trainer snapshotted and waits.
            msg = (
                f"preempted by Kueue ({preempted} time(s), last {last_preempted}); waiting in "
                f"queue {tj['spec']['queueName']} to resume from the latest snapshot"
            )
            cond(C.RUNNING, False, Reason.PREEMPTED, msg)
        else:
            cond(C.RUNNING, False, Reason.SUSPENDED if not queued else Reason.QUEUED)
    else:
        if any(c["type"] == C.SUSPENDED and c["status"] == "True" for c in conds):
            cond(C.SUSPENDED, False, Reason.RESUMED, "resumed from the latest checkpoint")
        if running:
            out["phase"] = JobPhase.RUNNING
            if preempted and (last_preempted or "") >= _last_failure_time(pods):
                when = f" at {last_preempted}" if last_preempted else ""
                msg = f"attempt {out['attempts']}; resumed after a preemption{when}"
                cond(C.RUNNING, True, Reason.PREEMPTED, msg)
            elif failed:
                code, message = last_failure(pods)
                cond(
                    C.RUNNING,
                    True,
                    Reason.RETRYING,
                    f"attempt {failed + 1}; last failure: {_failure_message(code, message, '')}",
                )
            else:
                cond(C.RUNNING, True, Reason.TRAINING, f"{len(running)} trainer pod(s) running")
        else:
            out["phase"] = JobPhase.PENDING
            cond(C.RUNNING, False, Reason.PODS_PENDING, pending_message(pods))
    out["conditions"] = conds
    return out
