"""TrainingShape: validate, stamp `status.version` (a hash of the spec), set Ready.

A shape that fails the model's validation (which mirrors the CRD's) is Ready=False/InvalidSpec;
one whose GPUs the memory model says are too small (``shape_fit.py``) is Ready=False/DoesNotFit.
When the status changes, returns the TrainerJobs waiting for this shape, so the caller can
reconcile them at once instead of waiting for the resync timer.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from vlm_operator import kube, metrics
from vlm_operator.api import ConditionType, Reason, TrainingShape, new_condition, set_condition
from vlm_operator.api.shape import shape_version
from vlm_operator.builders.labels import without_status
from vlm_operator.reconcile.shape_fit import does_not_fit

log = logging.getLogger("vlm_operator.shape")


def desired_status(body: dict[str, Any]) -> dict[str, Any]:
    """Pure: the status a shape should have."""
    gen = body["metadata"].get("generation")
    old = (body.get("status") or {}).get("conditions")
    try:
        shape = TrainingShape.model_validate(without_status(body))
    except ValidationError as e:
        msg = "; ".join(
            f"spec.{'.'.join(map(str, err['loc'][1:]))}: {err['msg']}" for err in e.errors()
        )
        cond = new_condition(
            ConditionType.READY, False, Reason.INVALID_SPEC, msg, observed_generation=gen
        )
        return {"observedGeneration": gen, "conditions": set_condition(old, cond)}
    too_big = does_not_fit(shape.spec)
    if too_big:
        cond = new_condition(
            ConditionType.READY, False, Reason.DOES_NOT_FIT, too_big, observed_generation=gen
        )
        return {"observedGeneration": gen, "conditions": set_condition(old, cond)}
    cond = new_condition(
        ConditionType.READY,
        True,
        Reason.VALID,
        f"{shape.spec.total_gpus} GPU(s) over {shape.spec.nodes} node(s)",
        observed_generation=gen,
    )
    return {
        "observedGeneration": gen,
        "version": shape_version(shape.spec),
        "conditions": set_condition(old, cond),
    }


def reconcile_shape(body: dict[str, Any]) -> list[tuple[str, str]]:
    name = body["metadata"]["name"]
    status = desired_status(body)
    old = body.get("status") or {}
    if all(old.get(k) == v for k, v in status.items()):
        return []  # nothing new for waiting jobs: they only wait for a change of the shape
    kube.patch_status(body, status)
    log.info("TrainingShape %s: version %s", name, status.get("version"))
    metrics.RECONCILES.labels(kind="TrainingShape", result="updated").inc()
    waiting = []
    for tj in kube.list_objects("TrainerJob"):
        st = tj.get("status") or {}
        if (
            tj["spec"].get("shape") == name
            and not st.get("shapeVersion")
            and st.get("phase") != "Failed"
        ):
            waiting.append((tj["metadata"]["namespace"], tj["metadata"]["name"]))
    return waiting
