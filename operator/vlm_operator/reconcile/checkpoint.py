"""Checkpoint: verify its files, then promote it when asked, through short Jobs.

Steps, each level-based like the TrainerJob's: no phase -> create the verify Job (Verifying);
verify Job done -> Available with `verified` and `sizeBytes` (or Failed/VerificationFailed);
Available and a promotion wanted -> create the promote Job (Promoting); promote Job done ->
Promoted with `status.promotion`, and the owner reference to the TrainerJob is dropped so that
deleting the job keeps the promoted checkpoint.

A promotion is wanted when `spec.promote.outputModel` is set on the Checkpoint, or when it is
its TrainerJob's final checkpoint, the TrainerJob asks for `promote` and has Succeeded.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from vlm_operator import kube, metrics
from vlm_operator.api import CheckpointPhase as P
from vlm_operator.api import ConditionType as C
from vlm_operator.api import JobPhase, Reason, new_condition, set_condition
from vlm_operator.api.conditions import now_rfc3339
from vlm_operator.builders.checkpoint import (
    CONTAINER,
    model_uri,
    promote_job,
    verify_job,
)
from vlm_operator.reconcile import best
from vlm_operator.reconcile.job_status import job_condition, last_failure
from vlm_operator.reconcile.serial import serial
from vlm_operator.settings import Settings

log = logging.getLogger("vlm_operator.checkpoint")


def wanted_output_model(ck: dict[str, Any], tj: dict[str, Any] | None) -> str | None:
    if (ck["spec"].get("promote") or {}).get("outputModel"):
        return ck["spec"]["promote"]["outputModel"]
    if tj is None or not (tj["spec"].get("promote") or {}).get("outputModel"):
        return None
    status = tj.get("status") or {}
    if status.get("phase") != JobPhase.SUCCEEDED:
        return None
    if tj["spec"]["promote"].get("select") == "best":  # the one the TrainerJob chose
        chosen = (status.get("selectedCheckpoint") or {}).get("checkpoint")
        wanted = chosen == ck["metadata"]["name"] and best.owned_by(ck, tj)
    else:
        wanted = bool(ck["spec"].get("final"))
    return tj["spec"]["promote"]["outputModel"] if wanted else None


def _run_task(ck: dict[str, Any], task_job: dict[str, Any]) -> tuple[str | None, int | None, str]:
    """Start the task Job unless it exists; (Complete|Failed|None, exit code, termination
    message) of its pod."""
    ns = ck["metadata"]["namespace"]
    job = kube.get("Job", ns, task_job["metadata"]["name"])
    if job is None:
        job, _ = kube.create(task_job)
    done = next((t for t in ("Complete", "Failed") if job_condition(job, t)), None)
    if done is None:
        return None, None, ""
    pods = kube.list_objects("Pod", ns, task_job["spec"]["template"]["metadata"]["labels"])
    if done == "Failed":
        code, message = last_failure(pods, CONTAINER)
        return done, code, message
    for p in pods:
        for cs in (p.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("exitCode") == 0:
                return done, 0, term.get("message", "")
    return done, 0, ""


def reconcile_checkpoint(namespace: str, name: str, settings: Settings) -> None:
    key = f"{namespace}/{name}"
    with serial(f"ckpt:{key}"), metrics.timed("Checkpoint"):
        ck = kube.get("Checkpoint", namespace, name)
        if ck is None or ck["metadata"].get("deletionTimestamp"):
            metrics.observe_phase("Checkpoint", key, None)
            return
        status = _next_status(ck, settings)
        old = ck.get("status") or {}
        if status and any(old.get(k) != v for k, v in status.items()):
            kube.merge_patch("Checkpoint", namespace, name, {"status": status}, status=True)
            if status.get("phase") != old.get("phase"):
                log.info(
                    "Checkpoint %s: phase %s -> %s", key, old.get("phase"), status.get("phase")
                )
                cond = status["conditions"][-1] if status.get("conditions") else {}
                warn = status.get("phase") == P.FAILED
                kube.post_event(
                    ck,
                    "Warning" if warn else "Normal",
                    cond.get("reason", "Phase"),
                    cond.get("message") or f"phase {status.get('phase')}",
                )
        metrics.observe_phase("Checkpoint", key, (status or old).get("phase"))
        metrics.RECONCILES.labels(kind="Checkpoint", result="synced").inc()


def _next_status(ck: dict[str, Any], settings: Settings) -> dict[str, Any] | None:
    meta, old = ck["metadata"], ck.get("status") or {}
    gen = meta.get("generation")
    conds = old.get("conditions")
    phase = old.get("phase")

    def cond(type: str, status: bool | str, reason: str, message: str = "") -> None:
        nonlocal conds
        conds = set_condition(
            conds, new_condition(type, status, reason, message, observed_generation=gen)
        )

    out: dict[str, Any] = {"observedGeneration": gen}
    if phase in (None, P.VERIFYING):
        done, code, message = _run_task(ck, verify_job(ck, settings.trainer_image))
        if done is None:
            cond(
                C.VERIFIED,
                "Unknown",
                Reason.VERIFYING,
                "checking the manifest's sha256 of every file",
            )
            return out | {"phase": P.VERIFYING, "conditions": conds}
        if done == "Failed":
            cond(
                C.VERIFIED, False, Reason.VERIFICATION_FAILED, f"exit code {code}: {message}"[:2000]
            )
            return out | {"phase": P.FAILED, "verified": False, "conditions": conds}
        info = json.loads(message or "{}")
        cond(
            C.VERIFIED,
            True,
            Reason.MANIFEST_VERIFIED,
            f"{info.get('files', '?')} files match the manifest",
        )
        out |= {"verified": True, "sizeBytes": info.get("sizeBytes"), **best.eval_status(info)}
        phase = P.AVAILABLE
        out["phase"] = phase
    if phase not in (P.AVAILABLE, P.PROMOTING):
        return None
    tj = kube.get("TrainerJob", meta["namespace"], ck["spec"]["trainerJob"])
    output = wanted_output_model(ck, tj)
    if output is None:
        cond(C.PROMOTED, False, Reason.NOT_REQUESTED, "spec.promote is not set")
        return out | {"phase": P.AVAILABLE, "conditions": conds}
    job = promote_job(ck, output, settings.model_storage, settings.trainer_image)
    done, code, message = _run_task(ck, job)
    if done is None:
        cond(C.PROMOTED, "Unknown", Reason.PROMOTION_RUNNING, f"writing model {output}")
        return out | {"phase": P.PROMOTING, "conditions": conds}
    if done == "Failed":
        metrics.PROMOTIONS.labels(result="failed").inc()
        cond(C.PROMOTED, False, Reason.PROMOTION_FAILED, f"exit code {code}: {message}"[:2000])
        return out | {"phase": P.FAILED, "conditions": conds}
    uri = model_uri(settings.model_storage, meta["namespace"], output)
    cond(C.PROMOTED, True, Reason.PROMOTION_SUCCEEDED, f"model {output} written to {uri}")
    metrics.PROMOTIONS.labels(result="succeeded").inc()
    if meta.get("ownerReferences"):  # keep the promoted checkpoint when its job is deleted
        kube.json_patch(
            "Checkpoint",
            meta["namespace"],
            meta["name"],
            [{"op": "remove", "path": "/metadata/ownerReferences"}],
        )
    promotion = {"outputModel": output, "uri": uri, "promotedAt": now_rfc3339()}
    return out | {"phase": P.PROMOTED, "promotion": promotion, "conditions": conds}
