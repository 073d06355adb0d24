"""spec.promote.select: best, on the operator's side: each Checkpoint's ``status.eval`` (from its
verified manifest) and the choice among a succeeded job's Checkpoints.

The choice waits until every Checkpoint of the job is verified or failed (a snapshot still
being verified could be the best); one that keepLast pruned is left out. Among the verified
ones with the metric in ``status.eval`` the best value wins, ties to the earlier step; when
none has the metric, the final checkpoint is promoted and the reason says so. Ownership: a
Checkpoint counts when its ``spec.trainerJob`` names the job and, where it carries owner
references, one of them has the job's UID (a Checkpoint of an older job of the same name does
not). Pure.
"""

from __future__ import annotations

import math
from typing import Any

from vlm_operator.api import CheckpointPhase
from vlm_operator.builders.labels import PRUNED_ANNOTATION


def eval_status(verify_info: dict[str, Any]) -> dict[str, Any]:
    """``{"eval": ...}`` for a Checkpoint's status from its verify Job's result; empty when
    the snapshot was not evaluated."""
    ev = verify_info.get("eval")
    if not isinstance(ev, dict) or not isinstance(ev.get("metrics"), dict):
        return {}
    metrics = {
        str(k)[:63]: float(v)
        for k, v in list(ev["metrics"].items())[:32]
        if isinstance(v, int | float) and math.isfinite(v)
    }
    out: dict[str, Any] = {"step": ev.get("step"), "metrics": metrics}
    headline = ev.get("headline")
    if headline in metrics:
        out |= {"metric": headline, "value": metrics[headline]}
        if ev.get("mode") in ("min", "max"):
            out["mode"] = ev["mode"]
    return {"eval": out}


def owned_by(ck: dict[str, Any], tj: dict[str, Any]) -> bool:
    if ck["spec"].get("trainerJob") != tj["metadata"]["name"]:
        return False
    refs = ck["metadata"].get("ownerReferences") or []
    uid = tj["metadata"].get("uid")
    # A promoted Checkpoint has dropped its owner reference: the name is all there is.
    return not refs or not uid or any(r.get("uid") == uid for r in refs)


def _pruned(ck: dict[str, Any]) -> bool:
    marked = PRUNED_ANNOTATION in (ck["metadata"].get("annotations") or {})
    return marked or (ck.get("status") or {}).get("phase") == CheckpointPhase.PRUNED


def choose(tj: dict[str, Any], checkpoints: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``status.selectedCheckpoint`` for a succeeded job with ``promote.select: best``, or None
    while some of its Checkpoints are still being verified (or none exists yet)."""
    promote = tj["spec"]["promote"]
    metric, mode = promote.get("metric", "eval_loss"), promote.get("mode", "min")
    # A snapshot keepLast pruned has no files: it is neither waited for (it may never be
    # verified) nor chosen. The trainer keeps the best one so far, so no pruned one is best.
    mine = [c for c in checkpoints if owned_by(c, tj) and not _pruned(c)]
    if not mine or any((c.get("status") or {}).get("verified") is None for c in mine):
        return None
    best: tuple[float, int, dict[str, Any]] | None = None
    for ck in sorted(mine, key=lambda c: c["spec"]["step"]):
        status = ck.get("status") or {}
        value = ((status.get("eval") or {}).get("metrics") or {}).get(metric)
        if not status.get("verified") or not isinstance(value, int | float):
            continue
        if best is None or (value < best[0] if mode == "min" else value > best[0]):
            best = (float(value), ck["spec"]["step"], ck)
    if best is None:
        final = next((c for c in mine if c["spec"].get("final")), None)
        if final is None:
            return None
        reason = f"no verified checkpoint has {metric} in status.eval; promoting the final one"
        return {"checkpoint": final["metadata"]["name"], "step": final["spec"]["step"],
                "metric": metric, "reason": reason}  # fmt: skip
    value, step, ck = best
    compared = sum(1 for c in mine if (c.get("status") or {}).get("verified"))
    word = "lowest" if mode == "min" else "highest"
    reason = f"{word} {metric} ({value:.6g}) of {compared} verified checkpoints, at step {step}"
    return {"checkpoint": ck["metadata"]["name"], "step": step, "metric": metric,
            "value": value, "reason": reason}  # fmt: skip
