"""Checkpoint: verify its files, then promote it when asked, through short Jobs.

Steps, each level-based like the TrainerJob's: no phase -> create the verify Job (Verifying);
verify Job done -> Available with `verified` and `sizeBytes` (or Failed/VerificationFailed);
Available and a promotion wanted -> create the promote Job (Promoting); promote Job done ->
Promoted with `status.promotion`, and the owner reference to the TrainerJob is dropped so that
deleting the job keeps the promoted checkpoint.

A promotion is wanted when `spec.promote.outputModel` is set on the Checkpoint, or when it is
its TrainerJob's final checkpoint, the TrainerJob asks for `promote` and has Succeeded. It runs
only for a Checkpoint owned by the UID of the TrainerJob it names and whose URI lies under that
job's storage folder (else Failed/NotOwned), and never replaces an existing model unless the
promote spec says `overwrite: true` (else Failed/ModelExists, the model left as it is).

Pruning: the trainer annotates a Checkpoint `vlmtrain.dev/pruned` before it deletes the
snapshot's files (keepLast), and only one with no promotion requested or running; such a
Checkpoint becomes phase Pruned (terminal, never promoted).
"""

from __future__ import annotations

import json
import logging
import posixpath
from typing import Any

from pydantic import ValidationError

from vlm_operator import kube, metrics
from vlm_operator.api import CheckpointPhase as P
from vlm_operator.api import ConditionType as C
from vlm_operator.api import JobPhase, Reason, TrainerJob, new_condition, set_condition
from vlm_operator.api.conditions import now_rfc3339
from vlm_operator.builders.checkpoint import (
    CONTAINER,
    EXIT_MODEL_EXISTS,
    model_uri,
    promote_job,
    verify_job,
)
from vlm_operator.builders.config import checkpoint_location
from vlm_operator.builders.labels import PRUNED_ANNOTATION, without_status
from vlm_operator.builders.storage import join_uri
from vlm_operator.reconcile import best, init_from
from vlm_operator.reconcile.job_status import job_condition, last_failure
from vlm_operator.reconcile.serial import serial
from vlm_operator.settings import Settings

log = logging.getLogger("vlm_operator.checkpoint")


def wanted_promote(ck: dict[str, Any], tj: dict[str, Any] | None) -> dict[str, Any] | None:
    """The promote spec that applies (the Checkpoint's own, or its Succeeded job's for the
    final checkpoint, or the one it selected with promote.select best), or None when no
    promotion is wanted."""
    if (ck["spec"].get("promote") or {}).get("outputModel"):
        return ck["spec"]["promote"]
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
    return tj["spec"]["promote"] if wanted else None


def not_owned(ck: dict[str, Any], tj: dict[str, Any] | None, default_storage: str) -> str | None:
    """Pure: why this Checkpoint may not be promoted as its TrainerJob's, or None.

    Anyone allowed to create Checkpoints (every trainer of the namespace) can write one that
    names another job; only one owned by that job's UID whose files lie under that job's
    storage folder is that job's snapshot."""
    name = ck["spec"]["trainerJob"]
    if tj is None:
        return f"TrainerJob {name} does not exist"
    uid = tj["metadata"]["uid"]
    refs = ck["metadata"].get("ownerReferences") or []
    if not any(r.get("kind") == "TrainerJob" and r.get("uid") == uid for r in refs):
        return f"not owned by TrainerJob {name} (uid {uid})"
    try:
        job = TrainerJob.model_validate(without_status(tj))
    except ValidationError as e:
        return f"TrainerJob {name} does not validate: {e}"
    folder = join_uri(checkpoint_location(job, default_storage), "checkpoints") + "/"
    scheme, sep, rest = ck["spec"]["uri"].partition("://")
    uri = f"{scheme}{sep}{posixpath.normpath(rest)}" if sep else posixpath.normpath(scheme)
    if not uri.startswith(folder) or uri == folder:
        return f"uri {ck['spec']['uri']} is not under TrainerJob {name}'s folder {folder}"
    return None


def _run_task(ck: dict[str, Any], task_job: dict[str, Any]) -> tuple[str | None, int | None, str]:
    """Start the task Job unless it exists; (Complete|Failed|None, exit code, termination
    message) of its pod."""
    ns = ck["metadata"]["namespace"]
    job = kube.get("Job", ns, task_job["metadata"]["name"])
    if job is None:
        job, _ = kube.create(task_job)
    else:
        kube.check_owned(job, task_job)  # never read someone else's Job as our task's
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
        ck = _drop_stale_marks(ck)  # the patched object: its status patch needs the new version
        try:
            status = _next_status(ck, settings)
        except kube.ForeignObject as e:
            if e.earlier:  # an earlier Checkpoint of this name's task Job: the GC removes it
                log.info("Checkpoint %s: waiting for %s %s to be removed", key, e.kind, e.name)
                return
            status = _failed(ck, C.VERIFIED if ck.get("status") is None else C.PROMOTED, e)
        old = ck.get("status") or {}
        if status and any(old.get(k) != v for k, v in status.items()):
            kube.patch_status(ck, status)
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
        if (status or old).get("phase") == P.PROMOTED and ck["metadata"].get("ownerReferences"):
            # Keep the promoted checkpoint when its job is deleted. Only once Promoted is
            # written: until then the owner is what proves it is the job's (see not_owned), and
            # a status write refused as stale (409) re-runs this reconcile from the top.
            kube.json_patch(
                "Checkpoint",
                namespace,
                name,
                [{"op": "remove", "path": "/metadata/ownerReferences"}],
            )
        metrics.observe_phase("Checkpoint", key, (status or old).get("phase"))
        metrics.RECONCILES.labels(kind="Checkpoint", result="synced").inc()


def _drop_stale_marks(ck: dict[str, Any]) -> dict[str, Any]:
    """Drop in-use marks (init_from.mark) of TrainerJobs that were deleted or finished without
    dropping theirs, so the Checkpoint can be pruned again."""
    if not init_from.marks(ck):
        return ck
    meta = ck["metadata"]
    stale = init_from.stale_marks(ck, kube.list_objects("TrainerJob", meta["namespace"]))
    if stale:
        log.info(
            "Checkpoint %s/%s: dropping in-use marks of %s", meta["namespace"], meta["name"], stale
        )
        return kube.merge_patch(
            "Checkpoint", meta["namespace"], meta["name"], init_from.unmark(stale)
        )
    return ck


def _failed(ck: dict[str, Any], type: str, e: kube.ForeignObject) -> dict[str, Any]:
    """Failed/ChildConflict: a task Job's name is taken by a Job that is not this one's."""
    gen, old = ck["metadata"].get("generation"), ck.get("status") or {}
    cond = new_condition(type, False, Reason.CHILD_CONFLICT, str(e), observed_generation=gen)
    conds = set_condition(old.get("conditions"), cond)
    return {"observedGeneration": gen, "phase": P.FAILED, "conditions": conds}


def _next_status(ck: dict[str, Any], settings: Settings) -> dict[str, Any] | None:
    meta, old = ck["metadata"], ck.get("status") or {}
    gen = meta.get("generation")
    conds = old.get("conditions")
    phase = old.get("phase")
    if phase in (P.PRUNED, P.PROMOTED, P.FAILED):
        return None  # terminal
    pruned = (meta.get("annotations") or {}).get(PRUNED_ANNOTATION)
    if pruned and phase != P.PROMOTING:
        # The trainer marks only a snapshot with no promotion wanted; its files are gone.
        conds = set_condition(
            conds,
            new_condition(
                C.PROMOTED,
                False,
                Reason.PRUNED,
                f"files removed by keepLast at {pruned}",
                observed_generation=gen,
            ),
        )
        return {"observedGeneration": gen, "phase": P.PRUNED, "conditions": conds}

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
    wanted = wanted_promote(ck, tj)
    if wanted is None:
        cond(C.PROMOTED, False, Reason.NOT_REQUESTED, "spec.promote is not set")
        return out | {"phase": P.AVAILABLE, "conditions": conds}
    output = wanted["outputModel"]
    if (why := not_owned(ck, tj, settings.checkpoint_storage)) is not None:
        metrics.PROMOTIONS.labels(result="failed").inc()
        cond(C.PROMOTED, False, Reason.NOT_OWNED, f"not promoted: {why}"[:2000])
        return out | {"phase": P.FAILED, "conditions": conds}
    overwrite = bool(wanted.get("overwrite"))
    job = promote_job(ck, output, settings.model_storage, settings.trainer_image, overwrite)
    done, code, message = _run_task(ck, job)
    if done is None:
        cond(C.PROMOTED, "Unknown", Reason.PROMOTION_RUNNING, f"writing model {output}")
        return out | {"phase": P.PROMOTING, "conditions": conds}
    if done == "Failed":
        metrics.PROMOTIONS.labels(result="failed").inc()
        reason = Reason.MODEL_EXISTS if code == EXIT_MODEL_EXISTS else Reason.PROMOTION_FAILED
        cond(C.PROMOTED, False, reason, f"exit code {code}: {message}"[:2000])
        return out | {"phase": P.FAILED, "conditions": conds}
    uri = model_uri(settings.model_storage, meta["namespace"], output)
    cond(C.PROMOTED, True, Reason.PROMOTION_SUCCEEDED, f"model {output} written to {uri}")
    metrics.PROMOTIONS.labels(result="succeeded").inc()
    promotion = {"outputModel": output, "uri": uri, "promotedAt": now_rfc3339()}
    return out | {"phase": P.PROMOTED, "promotion": promotion, "conditions": conds}
