"""TrainerJob: admit against its shape, create its children, mirror the Job into status.

Level-based: every call reads the current state and converges, so any trigger (the job's own
events, its Job's or pods' events, a shape appearing, the resync timer) may call it any number of
times. Children have fixed names and are server-side applied (or created once, for the Job,
whose pod template is immutable), so a restarted operator creates no duplicates. A child is
only ever this TrainerJob's when its controller ownerReference carries this job's UID: a name
taken by anything else fails the job with ChildConflict (checked for every child before the
first is made) and the object is never touched; one left by an earlier job of the same name
only delays the start until the garbage collector has removed it.

The operator writes only `status` (never `spec`), and in status only what it owns: phase,
conditions, times, attempts, shapeVersion. `progress` and `latestCheckpoint` are the trainer's.
"""

from __future__ import annotations

import logging
from typing import Any

import yaml
from pydantic import ValidationError

from vlm_operator import kube, metrics
from vlm_operator.api import ConditionType as C
from vlm_operator.api import (
    JobPhase,
    Reason,
    TrainerJob,
    TrainingShape,
    new_condition,
    set_condition,
)
from vlm_operator.api.conditions import is_condition_true
from vlm_operator.api.job import shape_violations
from vlm_operator.builders.config import CONFIG_KEY, InitWeights, validate_for_trainer
from vlm_operator.builders.job import trainer_workload
from vlm_operator.builders.labels import JOB_LABEL, TASK_LABEL, owner_ref, without_status
from vlm_operator.builders.network import network_policy
from vlm_operator.builders.rbac import trainer_rbac
from vlm_operator.reconcile import best, init_from
from vlm_operator.reconcile.init_from import InitSource
from vlm_operator.reconcile.job_status import derive_status
from vlm_operator.reconcile.serial import serial
from vlm_operator.settings import Settings

log = logging.getLogger("vlm_operator.trainerjob")
TERMINAL = (JobPhase.SUCCEEDED, JobPhase.FAILED)


def _not_admitted(tj: dict[str, Any], reason: str, message: str, terminal: bool) -> dict[str, Any]:
    gen = tj["metadata"].get("generation")
    conds = (tj.get("status") or {}).get("conditions")
    conds = set_condition(
        conds, new_condition(C.ADMITTED, False, reason, message, observed_generation=gen)
    )
    status: dict[str, Any] = {"observedGeneration": gen, "phase": JobPhase.PENDING}
    if terminal:
        conds = set_condition(
            conds, new_condition(C.FAILED, True, reason, message, observed_generation=gen)
        )
        status["phase"] = JobPhase.FAILED
    status["conditions"] = conds
    return status


def admission(
    tj: dict[str, Any],
    shape: dict[str, Any] | None,
    settings: Settings,
    init: InitSource | None = None,
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Pure: (status when the job cannot start, else None) and the children to create."""
    spec_shape = tj["spec"]["shape"]
    if shape is None:
        return _not_admitted(
            tj, Reason.SHAPE_NOT_FOUND, f"TrainingShape {spec_shape} not found", False
        ), []
    if not is_condition_true((shape.get("status") or {}).get("conditions"), C.READY):
        return _not_admitted(
            tj, Reason.SHAPE_NOT_READY, f"TrainingShape {spec_shape} is not Ready", False
        ), []
    try:
        job = TrainerJob.model_validate(without_status(tj))
        shp = TrainingShape.model_validate(without_status(shape))
    except ValidationError as e:
        return _not_admitted(tj, Reason.INVALID_SPEC, str(e), True), []
    problems = shape_violations(job.spec, shp.spec, spec_shape)
    if init is not None:
        problems += init_from.violations(
            init, job.spec.hyperparameters.lora_rank, shape, spec_shape
        )
    if problems:
        return _not_admitted(tj, Reason.INVALID_SPEC, "; ".join(problems), True), []
    weights = None
    if init is not None:  # a LoRA source is merged into its own base when the trainer loads it
        lora = init.type == "lora"
        weights = InitWeights(init.adapter_base if lora else init.uri, init.uri if lora else None)
    workload = trainer_workload(
        tj, shape, settings.checkpoint_storage, settings.trainer_image, weights
    )
    # The trainer's verdict on exactly the config file its pods will read (the ConfigMap).
    cfg = yaml.safe_load(workload[0]["data"][CONFIG_KEY])
    if error := validate_for_trainer(str(job.spec.mode), cfg):
        return _not_admitted(tj, Reason.INVALID_SPEC, f"trainer config: {error}", True), []
    policy = [network_policy(tj)] if settings.network_policy else []
    children = trainer_rbac(tj) + policy + workload
    return None, children


def _patch_status(tj: dict[str, Any], status: dict[str, Any]) -> bool:
    """Patch only when something changed (no churn, no resourceVersion bumps)."""
    old = tj.get("status") or {}
    if all(old.get(k) == v for k, v in status.items()):
        return False
    meta = tj["metadata"]
    kube.patch_status(tj, status)
    if status.get("phase") and status["phase"] != old.get("phase"):
        failed = status["phase"] == JobPhase.FAILED
        cond = next(
            (
                c
                for c in status.get("conditions", [])
                if c["type"] == (C.FAILED if failed else C.RUNNING)
            ),
            {},
        )
        log.info(
            "TrainerJob %s/%s: phase %s -> %s",
            meta["namespace"],
            meta["name"],
            old.get("phase"),
            status["phase"],
        )
        kube.post_event(
            tj,
            "Warning" if failed else "Normal",
            cond.get("reason") or str(status["phase"]),
            cond.get("message") or f"phase {status['phase']}",
        )
    return True


def reconcile_job(namespace: str, name: str, settings: Settings) -> list[tuple[str, str]]:
    """Reconcile one TrainerJob; returns the Checkpoints to reconcile next (when it has just
    succeeded with `promote`, its final checkpoint is to be promoted)."""
    key = f"{namespace}/{name}"
    with serial(key), metrics.timed("TrainerJob"):
        tj = kube.get("TrainerJob", namespace, name)
        if tj is None or tj["metadata"].get("deletionTimestamp"):
            metrics.observe_phase("TrainerJob", key, None)
            return []
        result = _reconcile(tj, settings)
        metrics.RECONCILES.labels(kind="TrainerJob", result=result).inc()
        if (tj["spec"].get("promote") or {}).get("select") == "best":
            return _select_best(namespace, name)
        if result != "succeeded" or not tj["spec"].get("promote"):
            return []
        uid = tj["metadata"]["uid"]
        return [
            (namespace, c["metadata"]["name"])
            for c in kube.list_objects("Checkpoint", namespace)
            if c["spec"].get("trainerJob") == name
            and c["spec"].get("final")
            and uid in {r.get("uid") for r in c["metadata"].get("ownerReferences") or []}
        ]


def _select_best(namespace: str, name: str) -> list[tuple[str, str]]:
    """promote.select: best on a succeeded job: choose once (status.selectedCheckpoint and an
    Event), then keep pointing the Checkpoint reconciler at the chosen one."""
    tj = kube.get("TrainerJob", namespace, name)
    status = (tj or {}).get("status") or {}
    if tj is None or status.get("phase") != JobPhase.SUCCEEDED:
        return []
    chosen = status.get("selectedCheckpoint")
    if not chosen:
        chosen = best.choose(tj, kube.list_objects("Checkpoint", namespace))
        if chosen is None:  # a snapshot is still being verified
            return []
        kube.merge_patch(
            "TrainerJob", namespace, name, {"status": {"selectedCheckpoint": chosen}}, status=True
        )
        model = tj["spec"]["promote"]["outputModel"]
        msg = f"promoting Checkpoint {chosen['checkpoint']} as {model}: {chosen['reason']}"
        kube.post_event(tj, "Normal", Reason.CHECKPOINT_SELECTED, msg)
    return [(namespace, chosen["checkpoint"])]


def jobs_awaiting_selection(namespace: str, checkpoint: str) -> list[str]:
    """The TrainerJob of ``checkpoint`` when it still has to choose its best checkpoint (a
    verification that finishes may be what it waits for)."""
    ck = kube.get("Checkpoint", namespace, checkpoint)
    tj = ck and kube.get("TrainerJob", namespace, ck["spec"]["trainerJob"])
    if not tj or (tj["spec"].get("promote") or {}).get("select") != "best":
        return []
    status = tj.get("status") or {}
    waiting = status.get("phase") == JobPhase.SUCCEEDED and not status.get("selectedCheckpoint")
    return [tj["metadata"]["name"]] if waiting else []


def _reconcile(tj: dict[str, Any], settings: Settings) -> str:
    meta, spec = tj["metadata"], tj["spec"]
    ns, name = meta["namespace"], meta["name"]
    status = tj.get("status") or {}
    metrics.observe_phase("TrainerJob", f"{ns}/{name}", status.get("phase"))
    job = kube.get("Job", ns, name)
    if job is not None and kube.controller_uid(job) != meta["uid"]:
        # Not ours (another owner's, or an earlier job's of this name): never read it as ours.
        return "terminal" if status.get("phase") in TERMINAL else _conflict(tj, job)
    if status.get("phase") in TERMINAL and (
        job is None or status.get("observedGeneration") == meta.get("generation")
    ):
        _release_source(tj)
        return "terminal"  # nothing to do; a TTL-deleted Job is not re-created
    if job is None:
        if status.get("startTime"):
            # It ran before, so the Job was deleted from outside: say so instead of re-running.
            msg = "the batch/v1 Job was deleted while the TrainerJob was running"
            _patch_status(tj, _not_admitted(tj, Reason.JOB_DELETED, msg, True))
            return "job-deleted"
        shape = kube.get("TrainingShape", None, spec["shape"])
        init = None
        if spec.get("initFrom"):
            init = init_from.resolve(spec["initFrom"], kube.list_objects("Checkpoint", ns))
            if isinstance(init, str):  # not there (or not verified) yet: wait for it
                _patch_status(tj, _not_admitted(tj, Reason.INIT_FROM_NOT_READY, init, False))
                return "blocked"
        blocked, children = admission(tj, shape, settings, init)
        if blocked is not None:
            _patch_status(tj, blocked)
            return "blocked"
        if init and spec["initFrom"].get("checkpoint"):
            # Before any child exists, so its trainer never starts on files being pruned; a
            # 409 (the Checkpoint changed since it was read, e.g. marked pruned) retries.
            kube.merge_patch(
                "Checkpoint",
                ns,
                init.checkpoint,
                init_from.mark(tj),
                resource_version=init.resource_version,
            )
        try:
            _claim(children)
            for obj in children[:-1]:
                kube.apply(obj)
            job, created = kube.create(children[-1])
        except kube.ForeignObject as e:
            _patch_status(tj, _not_admitted(tj, Reason.CHILD_CONFLICT, str(e), not e.earlier))
            return "conflict"
        gen = meta.get("generation")
        conds = set_condition(
            status.get("conditions"),
            new_condition(
                C.ADMITTED,
                True,
                Reason.SHAPE_RESOLVED,
                f"TrainingShape {spec['shape']} version {shape['status']['version']}",
                observed_generation=gen,
            ),
        )
        conds = set_condition(
            conds,
            new_condition(
                C.RUNNING, False, Reason.JOB_CREATED, f"Job {name} created", observed_generation=gen
            ),
        )
        _patch_status(
            tj,
            {
                "observedGeneration": gen,
                "phase": JobPhase.PENDING,
                "shapeVersion": shape["status"]["version"],
                "conditions": conds,
                **({"initFrom": init.status()} if init else {}),
            },
        )
        if created:
            kube.post_event(
                tj, "Normal", Reason.JOB_CREATED, f"created Job {name} on shape {spec['shape']}"
            )
        return "created"
    _sync_suspend(tj, job)
    pods = kube.list_objects("Pod", ns, {JOB_LABEL: name, TASK_LABEL: "train"})
    tj["status"] = status
    new = derive_status(tj, job, pods)
    if new.get("phase") in TERMINAL:
        _release_source(tj)  # before the status says so: a failure here retries from the top
    changed = _patch_status(tj, new)
    if (new.get("preemptions") or 0) > (status.get("preemptions") or 0):
        running = next(c for c in new["conditions"] if c["type"] == C.RUNNING)
        kube.post_event(tj, "Normal", Reason.PREEMPTED, running.get("message") or "preempted")
    return "succeeded" if changed and new.get("phase") == JobPhase.SUCCEEDED else "synced"


def _release_source(tj: dict[str, Any]) -> None:
    """Drop this job's in-use mark from its spec.initFrom.checkpoint (see init_from.mark), if
    the Checkpoint still carries it."""
    name = (tj["spec"].get("initFrom") or {}).get("checkpoint")
    ck = name and kube.get("Checkpoint", tj["metadata"]["namespace"], name)
    uid = tj["metadata"]["uid"]
    if ck and uid in init_from.marks(ck):
        kube.merge_patch("Checkpoint", ck["metadata"]["namespace"], name, init_from.unmark([uid]))


def _claim(children: list[dict[str, Any]]) -> None:
    """Raise ForeignObject when any child's name is taken by an object that is not ours, before
    any child is created: a collision leaves nothing half-made behind."""
    for obj in children:
        meta = obj["metadata"]
        if (existing := kube.get(obj["kind"], meta["namespace"], meta["name"])) is not None:
            kube.check_owned(existing, obj)


def _conflict(tj: dict[str, Any], job: dict[str, Any]) -> str:
    """A Job of the TrainerJob's name that it does not control: fail (or wait for an earlier
    job's to be garbage-collected); the Job is left as it is."""
    want = {"metadata": {"ownerReferences": [owner_ref(tj)]}}
    e = kube.ForeignObject(job, want)
    _patch_status(tj, _not_admitted(tj, Reason.CHILD_CONFLICT, str(e), not e.earlier))
    return "conflict"


def _sync_suspend(tj: dict[str, Any], job: dict[str, Any]) -> None:
    """spec.suspend drives the Job's; with Kueue (queueName) only suspending is ours to do."""
    want = bool(tj["spec"].get("suspend"))
    have = bool(job.get("spec", {}).get("suspend"))
    if want == have or (not want and tj["spec"].get("queueName")):
        return
    meta = tj["metadata"]
    kube.merge_patch("Job", meta["namespace"], meta["name"], {"spec": {"suspend": want}})
    job["spec"]["suspend"] = want
    kube.post_event(
        tj,
        "Normal",
        Reason.SUSPENDED if want else Reason.RESUMED,
        "Job suspended; pods stopped" if want else "Job resumed",
    )
